"""Reader for IDX files (the MNIST / FashionMNIST format), gzipped or not."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from vpntk_jax.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type byte -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

# Split -> file-name prefix used by the MNIST family.
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def _read_bytes(path: Path) -> bytes:
  """Reads a file, transparently gunzipping it (detected by content, not name)."""
  try:
    raw = path.read_bytes()
  except OSError as e:
    raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from e
  if not raw.startswith(_GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f"IDX file {path} is not a readable gzip file ({e}); the download "
                    f"may be incomplete") from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads one IDX file into an array with its native shape.

  Raises:
    DataError: on a bad magic number, unknown type, or wrong payload length.
  """
  path = Path(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataError(f"IDX file {path} is too short ({len(data)} bytes) to hold a header")
  zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise DataError(f"{path} is not an IDX file: bad magic number 0x{data[:4].hex()} "
                    f"(expected e.g. 0x{IMAGES_MAGIC:08x} for images, "
                    f"0x{LABELS_MAGIC:08x} for labels)")
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise DataError(f"IDX file {path} is truncated inside its header ({len(data)} of "
                    f"{header_len} bytes)")
  dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
  dtype = _IDX_DTYPES[type_code]
  expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
  actual = len(data) - header_len
  if actual != expected:
    what = "truncated" if actual < expected else "longer than its header says"
    raise DataError(f"IDX file {path} is {what}: header dims {dims} need {expected} "
                    f"payload bytes, found {actual}")
  arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
  # Native byte order and a writable array: frombuffer views are read-only.
  return arr.astype(dtype.newbyteorder("="), copy=True)


def _read_expecting(path: Path, magic: int, kind: str) -> np.ndarray:
  arr = read_idx(path)
  if arr.dtype != np.uint8 or arr.ndim != (magic & 0xFF):
    raise DataError(f"{path} does not hold {kind}: expected magic 0x{magic:08x} "
                    f"(uint8, {magic & 0xFF} dims), got {arr.dtype} with shape {arr.shape}")
  return arr


def read_idx_pair(images_path: str | os.PathLike[str],
                  labels_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
  """Reads an image file (N, H, W) and a label file (N,) and checks they match."""
  images = _read_expecting(Path(images_path), IMAGES_MAGIC, "images")
  labels = _read_expecting(Path(labels_path), LABELS_MAGIC, "labels")
  if images.shape[0] != labels.shape[0]:
    raise DataError(f"IDX image/label count mismatch: {images_path} has {images.shape[0]} "
                    f"images but {labels_path} has {labels.shape[0]} labels")
  return images, labels


def _candidate_names(prefix: str, kind: str) -> list[str]:
  # Both spellings occur in the wild ("train-images-idx3-ubyte" and the
  # original LeCun "train-images.idx3-ubyte"), each gzipped or not.
  ndim = "3" if kind == "images" else "1"
  bases = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
  return [b + ext for b in bases for ext in (".gz", "")]


def _first_existing(directory: Path, names: list[str]) -> Path | None:
  for n in names:
    if (directory / n).is_file():
      return directory / n
  return None


def split_prefix(split: str) -> str:
  """Maps "train"/"test" to the MNIST file-name prefix."""
  if split not in _SPLIT_PREFIX:
    raise DataError(f"IDX datasets have splits 'train' and 'test', got {split!r}")
  return _SPLIT_PREFIX[split]


def find_standard_pair(directory: Path, split: str) -> tuple[Path, Path] | None:
  """Returns the MNIST-named (images, labels) files for `split`, or None."""
  prefix = split_prefix(split)
  images = _first_existing(directory, _candidate_names(prefix, "images"))
  labels = _first_existing(directory, _candidate_names(prefix, "labels"))
  return (images, labels) if images and labels else None


def _idx_files(directory: Path, ndim: str) -> list[Path]:
  return sorted(p for p in directory.iterdir()
                if p.is_file() and f"idx{ndim}" in p.name.lower())


def has_idx_files(directory: Path) -> bool:
  """True if `directory` holds at least one IDX image and one IDX label file."""
  try:
    return bool(_idx_files(directory, "3")) and bool(_idx_files(directory, "1"))
  except OSError:
    return False


def find_any_pair(directory: Path, split: str) -> tuple[Path, Path]:
  """Finds an IDX image/label pair in `directory` for `split`.

  MNIST-style names win; otherwise files whose names start with the split
  (e.g. "test-...") are used; a directory with exactly one image and one
  label file serves only as the "train" split.
  """
  pair = find_standard_pair(directory, split)
  if pair:
    return pair
  images, labels = _idx_files(directory, "3"), _idx_files(directory, "1")
  prefixes = (split, split_prefix(split))
  imgs = [p for p in images if p.name.startswith(prefixes)]
  labs = [p for p in labels if p.name.startswith(prefixes)]
  if len(imgs) == 1 and len(labs) == 1:
    return imgs[0], labs[0]
  if split == "train" and len(images) == 1 and len(labels) == 1:
    return images[0], labels[0]
  found = ", ".join(p.name for p in images + labels) or "none"
  raise DataError(f"cannot find a unique IDX image/label pair for split {split!r} in "
                  f"{directory} (IDX files found: {found}); expected names like "
                  f"{_candidate_names(split_prefix(split), 'images')[0]} and "
                  f"{_candidate_names(split_prefix(split), 'labels')[0]}")
