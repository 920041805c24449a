"""`python -m activator`: run the front door (see activator.main)."""

import sys

from activator.main import main

sys.exit(main())
