"""An output directory written whole or not at all: built in place when new, else in a
staging directory beside it and swapped in at the end (--force), and replaced only
when it holds nothing but what the library writes there. Runs (`run_dir`), public
models and public diffusion models (`public/`) are written this way; nothing here
knows what they hold.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from vpntk_jax.errors import RunDirError


@dataclasses.dataclass
class RunDir:
  """Where a run (or a public-models directory) writes. `path` is the final place;
  `work` where files go now.

  They differ when an existing directory is replaced (--force): the new one is
  built in a sibling staging directory and swapped in at the end, so a failure
  leaves the old one untouched.
  """
  path: str
  work: str
  resumed: bool = False

  def file(self, name: str) -> str:
    return os.path.join(self.work, name)

  @property
  def staged(self) -> bool:
    return self.work != self.path

  def finish(self) -> None:
    """Swaps a staged directory in as `path` (nothing to do for one built in place)."""
    if not self.staged:
      return
    trash = self.path + ".replaced"
    if os.path.exists(trash):
      shutil.rmtree(trash)
    if os.path.exists(self.path):
      os.replace(self.path, trash)
    os.replace(self.work, self.path)
    shutil.rmtree(trash, ignore_errors=True)
    self.work = self.path


def is_nonempty_dir(path: str) -> bool:
  return os.path.isdir(path) and bool(os.listdir(path))


def staging_path(out: str) -> str:
  return out.rstrip("/") + ".partial"


def check_replaceable(out: str, own_names: frozenset, marker: str, what: str) -> None:
  """Raises unless `out` holds only what the library writes there (`own_names`),
  including `marker`: --force must never delete a file the library did not make."""
  entries = set(os.listdir(out))
  foreign = sorted(entries - own_names)
  if marker not in entries or foreign:
    shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
    raise RunDirError(
        f"{out} is not {what} (" + (f"it also holds {shown}" if foreign else f"no {marker}") +
        "): --force replaces only a directory this library made, and nothing was touched. "
        "Choose another --out, or empty the directory yourself.")


def make_dir(path: str) -> None:
  """os.makedirs, with a failure (no permission, a file in the way) as a RunDirError."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    blocker = path
    while blocker and not os.path.exists(blocker):
      blocker = os.path.dirname(blocker)
    if blocker and not os.path.isdir(blocker):
      raise RunDirError(f"cannot create the directory {path}: {blocker} is a file") from None
    raise RunDirError(f"cannot create the directory {path}: {e.strerror or e}") from None


def check_can_create(path: str, what: str) -> None:
  """Raises a RunDirError unless `path` is, or could be made as, a writable directory,
  without creating anything (a check made before a release)."""
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise RunDirError(f"{what} {path}: {existing} is a file")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise RunDirError(f"{what} {path}: {existing} is not writable")


def stage(out: str, *, resume: bool = False) -> RunDir:
  """A fresh staging directory beside `out`, to be swapped in by `finish()`; with
  `resume`, an interrupted one left there is kept (its checkpoints resume)."""
  staging = staging_path(out)
  if resume and os.path.isdir(staging):
    return RunDir(out, staging)
  if os.path.exists(staging):
    shutil.rmtree(staging)
  make_dir(staging)
  return RunDir(out, staging)
