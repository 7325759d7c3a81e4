"""Progress and warning lines for the operator's terminal (stderr), from one place."""

from __future__ import annotations

import sys


def say(msg: str, quiet: bool = False) -> None:
  """Prints `msg` to stderr unless `quiet`."""
  if not quiet:
    print(msg, file=sys.stderr, flush=True)
