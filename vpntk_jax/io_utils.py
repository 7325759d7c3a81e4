"""Atomic file writes: a reader sees either the old file or the new one, never half of one.

Each writer writes to a temporary file in the destination's directory (so the final
`os.replace` is a same-filesystem rename), fsyncs it, then renames it over the target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np

PathLike = str | os.PathLike


def _json_default(obj: Any) -> Any:
  """Converts numpy / pathlib values that `json` cannot encode natively."""
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, pathlib.PurePath):
    return str(obj)
  # jax arrays and other array-likes: go through numpy rather than import jax here.
  if hasattr(obj, "__array__"):
    return np.asarray(obj).tolist()
  raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _fsync_dir(directory: pathlib.Path) -> None:
  """Makes the rename itself durable; best effort where directories cannot be opened."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def _atomic_binary_file(path: PathLike) -> Iterator[BinaryIO]:
  """Yields a temp file next to `path`; on clean exit it replaces `path`, else it is removed."""
  target = pathlib.Path(path)
  directory = target.parent if str(target.parent) else pathlib.Path(".")
  directory.mkdir(parents=True, exist_ok=True)
  fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_name, target)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp_name)
    raise
  _fsync_dir(directory)


def _write_atomic(path: PathLike, write: Callable[[BinaryIO], None]) -> None:
  with _atomic_binary_file(path) as f:
    write(f)


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically (parent directories are created)."""
  _write_atomic(path, lambda f: f.write(data))


def write_json_atomic(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
  """Writes `obj` as JSON to `path` atomically.

  numpy scalars/arrays and paths are converted; NaN/inf are written as Python's
  `NaN`/`Infinity` (readable by `json.load`), so callers wanting strict JSON should
  encode them themselves. The text is fully encoded before the file is touched,
  so an unserializable object leaves the old file intact.
  """
  text = json.dumps(obj, indent=indent, default=_json_default) + "\n"
  write_bytes_atomic(path, text.encode("utf-8"))


def save_npz_atomic(path: PathLike, **arrays: Any) -> None:
  """`np.savez` to `path` atomically; unlike `np.savez`, no `.npz` suffix is appended."""
  # Streaming into the temp file avoids holding a second copy of large arrays in memory;
  # a failure half-way removes the temp file and leaves the old `path` untouched.
  _write_atomic(path, lambda f: np.savez(f, **arrays))


def sha256_file(path: PathLike) -> str:
  """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
