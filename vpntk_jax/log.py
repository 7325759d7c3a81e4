"""What a run tells its operator, from one place: the library's logger
("vpntk_jax"), a run's log.txt, progress that suits where it is shown, and the
CSV logs a run keeps (train_log.csv, dp_sgd_log.csv) with their TensorBoard
scalars.

- Messages go to stderr (unless quiet) and to the log.txt of the run in
  progress (always), with a timestamp there.
- Progress is a tqdm bar on a terminal; elsewhere (a SLURM job's file, CI, a
  TPU worker's log) a plain line every `PROGRESS_SECONDS` with rate and ETA, so
  a redirected log reads line by line. log.txt gets the plain lines too.
- In a multi-host job only process 0 writes messages.
- Nothing private reaches log.txt (it is stored with the run): a message or
  bar marked private (a private count, under add/remove a secret) is shown on
  the terminal only, and a private bar shows no counts off a terminal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time

from tqdm.auto import tqdm

from vpntk_jax import distributed
from vpntk_jax import io_utils
from vpntk_jax.tensorboard_events import ScalarWriter

LOGGER = logging.getLogger("vpntk_jax")
PROGRESS_SECONDS = 30.0
TENSORBOARD_DIR = "tensorboard"  # next to each CSV log


def _stderr_is_terminal() -> bool:
  try:
    return sys.stderr.isatty()
  except (AttributeError, ValueError):
    return False


class _Stderr(logging.StreamHandler):
  """stderr as it is when a record is written (tests and notebooks swap it)."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, value):
    del value

  def filter(self, record):
    if getattr(record, "quiet", False) or not distributed.is_primary():
      return False
    # On a terminal the bar shows progress; its plain lines are for files.
    return not (getattr(record, "progress", False) and _stderr_is_terminal())


def _install_stderr_handler() -> None:
  if not any(isinstance(h, _Stderr) for h in LOGGER.handlers):
    LOGGER.addHandler(_Stderr())
  LOGGER.setLevel(logging.INFO)
  LOGGER.propagate = False


_install_stderr_handler()


def say(msg: str, quiet: bool = False, *, private: bool = False) -> None:
  """Logs `msg`: to stderr unless `quiet`, to the run's log.txt unless `private`."""
  LOGGER.info(msg, extra={"quiet": quiet, "private": private})


class _RunFile(logging.FileHandler):
  def filter(self, record):
    return distributed.is_primary() and not getattr(record, "private", False)


@contextlib.contextmanager
def run_log(path: str):
  """Appends every message to `path` (a run's log.txt) while the block runs."""
  handler = _RunFile(path, mode="a", encoding="utf-8")
  handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
  LOGGER.addHandler(handler)
  try:
    yield
  finally:
    LOGGER.removeHandler(handler)
    handler.close()


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A progress bar: tqdm on a terminal, plain periodic lines elsewhere (module doc)."""

  def __init__(self, iterable=None, *, total: int | None = None, desc: str = "",
               initial: int = 0, disable: bool = False, private: bool = False, **bar_kwargs):
    self.iterable, self.desc, self.n, self.private = iterable, desc, initial, private
    self.total = len(iterable) if total is None and iterable is not None else total
    self.quiet, self.postfix = disable, ""
    self._bar = tqdm(total=self.total, initial=initial, desc=desc,
                     disable=disable or not _stderr_is_terminal(), **bar_kwargs)
    self._start_n, self._start = initial, time.monotonic()
    self._last_line = self._start
    if private:
      self._line(f"{desc}: started")

  def _line(self, msg: str) -> None:
    LOGGER.info(msg, extra={"quiet": self.quiet, "progress": True})

  def _status(self, final: bool = False) -> str:
    elapsed = time.monotonic() - self._start
    rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
    done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
    eta = (f", ETA {_duration((self.total - self.n) / rate)}"
           if self.total and rate > 0 and not final else "")
    postfix = f", {self.postfix}" if self.postfix else ""
    return f"{self.desc}: {done}, {rate:.3g}/s, elapsed {_duration(elapsed)}{eta}{postfix}"

  def update(self, k: int = 1) -> None:
    self.n += k
    self._bar.update(k)
    now = time.monotonic()
    if not self.private and now - self._last_line >= PROGRESS_SECONDS:
      self._last_line = now
      self._line(self._status())

  def set_postfix(self, **values) -> None:
    self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())
    self._bar.set_postfix(**values)

  def set_postfix_str(self, text: str) -> None:
    self.postfix = text
    self._bar.set_postfix_str(text)

  def close(self) -> None:
    self._bar.close()
    # A private bar's duration would be one more number computed from private data.
    self._line(f"{self.desc}: done" if self.private else f"{self._status(final=True)} (done)")

  def __iter__(self):
    for item in self.iterable:
      yield item
      self.update(1)
    self.close()


# --- CSV logs, and their scalars for TensorBoard ------------------------------------

_SCALAR_WRITERS: dict[str, ScalarWriter] = {}


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
  """Appends one row (values written as given: format them first) to a CSV log,
  and its numbers as TensorBoard scalars `<log name>/<column>` in tensorboard/
  beside it (a resumed run's redone steps appear there twice)."""
  with open(path, "a") as f:
    f.write(",".join(str(v) for v in values) + "\n")
  with open(path) as f:
    columns = f.readline().strip().split(",")
  logdir = os.path.join(os.path.dirname(os.path.abspath(path)), TENSORBOARD_DIR)
  if logdir not in _SCALAR_WRITERS:
    _SCALAR_WRITERS[logdir] = ScalarWriter(logdir)
  name = os.path.splitext(os.path.basename(path))[0]
  scalars = {}
  for column, value in zip(columns[1:], values[1:]):
    try:
      scalars[f"{name}/{column}"] = float(value)
    except ValueError:
      continue
  _SCALAR_WRITERS[logdir].write(int(values[0]), scalars)
