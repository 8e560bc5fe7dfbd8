"""``python -m clacky_ipy collect|report|demo``."""

import sys

from .cli import main

sys.exit(main())
