"""The `ember` command's entry point: imports the CLI itself, so that a Ctrl-C while the CLI's
modules load (about half a second) ends the command quietly, as one during a command does."""

from __future__ import annotations

import signal
import sys


def main() -> None:
    try:
        from ember.cli import main as cli
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    cli()
