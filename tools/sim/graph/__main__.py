"""``python -m tools.sim.graph``: see cli.py."""

import sys

from .cli import main

sys.exit(main())
