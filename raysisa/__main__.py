"""``python -m raysisa``: the CLI (also the entry point for ``ray job submit``)."""

import sys

from raysisa.cli import main

sys.exit(main())
