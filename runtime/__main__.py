"""`python -m runtime`: start one replica's inference server (see runtime.server)."""

import sys

from runtime.server import main

sys.exit(main())
