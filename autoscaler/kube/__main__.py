from autoscaler.kube.main import main

raise SystemExit(main())
