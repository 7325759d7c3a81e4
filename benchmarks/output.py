"""How a benchmark hands over its result: one JSON object on stdout, and in a file."""

from __future__ import annotations

import json


def emit(result: dict, path: str | None) -> None:
  """Prints `result` as indented JSON and writes the same text to `path` (if given)."""
  text = json.dumps(result, indent=2)
  print(text)
  if path:
    with open(path, "w") as f:
      f.write(text + "\n")
