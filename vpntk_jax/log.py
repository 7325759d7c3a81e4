"""Progress and warning lines for the operator's terminal (stderr), and the CSV
logs a run keeps (train_log.csv, dp_sgd_log.csv), from one place."""

from __future__ import annotations

import os
import sys

from vpntk_jax import io_utils


def say(msg: str, quiet: bool = False) -> None:
  """Prints `msg` to stderr unless `quiet`."""
  if not quiet:
    print(msg, file=sys.stderr, flush=True)


def start_csv_log(path: str, header: str, start_step: int) -> None:
  """Creates the CSV log `path` with column names `header` (the first column is the
  step), or keeps only its rows up to `start_step`, the checkpoint a run resumes
  from: a run killed between checkpoints logged steps it will now redo, and
  dropping them keeps one row per step."""
  header = header.rstrip("\n") + "\n"
  if not os.path.exists(path):
    io_utils.write_bytes_atomic(path, header.encode())
    return
  with open(path) as f:
    lines = f.read().splitlines(keepends=True)
  kept = [line for line in lines[1:]
          if line.split(",")[0].isdigit() and int(line.split(",")[0]) <= start_step]
  if len(kept) != len(lines) - 1:
    io_utils.write_bytes_atomic(path, (header + "".join(kept)).encode())


def append_csv_row(path: str, *values) -> None:
  """Appends one row (values written as given: format them first) to a CSV log."""
  with open(path, "a") as f:
    f.write(",".join(str(v) for v in values) + "\n")
