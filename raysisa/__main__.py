"""``python -m raysisa``: the CLI (also the entry point for ``ray job submit``)."""

from raysisa.cli import entry

entry()
