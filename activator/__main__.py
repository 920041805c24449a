"""`python -m activator`: run the front door (see activator.server)."""

import sys

from activator.server import main

sys.exit(main())
