"""Exact facts about the private data, for the operator's terminal only.

Some diagnostics (how strong the signal is against the noise, which classes are
empty, how far a canary moves the exact statistic) are computed on the private
data without noise. They are not covered by the guarantee, so they are shown
only when asked for (`--private-diagnostics`), marked, on stderr, and never
written to a run's files, which are what users share.
"""

from __future__ import annotations

import sys

MARK = "PRIVATE (exact, not differentially private; do not share)"


def show(lines: list[str]) -> None:
  """Prints `lines` to the operator's terminal, each marked as private."""
  for line in lines:
    print(f"{MARK}: {line}", file=sys.stderr, flush=True)


def marked(values: dict) -> dict:
  """`values` under a key that says what they are, for JSON shown to the operator."""
  return {"note": MARK, **values}
