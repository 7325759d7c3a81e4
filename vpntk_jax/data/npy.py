"""The streamed source: uncompressed .npy files, memory-mapped and never read whole.

`npy:<dir>` holds images.npy (uint8, NHW or NHWC, C order) and labels.npy
(integers), optionally images_test.npy / labels_test.npy and class_names.npy.
Only the labels are read into memory. Every later stage reads the images in
fixed-size chunks or batches (the release's `arrays.padded_chunk`, DP-SGD's
Poisson batches), so the kernel pages them in and drops them again: a private
set larger than memory works. Other sources convert pixels on load; this one
must already hold uint8 at the run's shape, since converting it would read it
all into memory (`check_used_as_stored`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vpntk_jax import arrays
from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.errors import DataError, MissingSplitError

PREFIX = "npy:"
_NPY_MAGIC = b"\x93NUMPY"


def _suffix(directory: Path, split: str) -> str | None:
  # Split-specific files win over plain ones, as in load_npz.
  for suffix in (f"_{split}", ""):
    if (directory / f"images{suffix}.npy").is_file():
      return suffix
  return None


def has_npy_files(directory: Path) -> bool:
  """Whether `directory` looks like an npy source (so a bare <dir> is read as one)."""
  return _suffix(directory, "train") is not None


def _open_images(path: Path) -> np.ndarray:
  # np.load would open an .npz whatever its name, and call anything else pickled.
  with open(path, "rb") as f:
    magic = f.read(len(_NPY_MAGIC))
  if magic != _NPY_MAGIC:
    kind = "it is a zip (.npz) archive" if magic.startswith(b"PK") else "no NumPy header"
    raise DataError(f"{path} is not a .npy file ({kind}); save the images with np.save")
  try:
    images = np.load(path, mmap_mode="r", allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"cannot memory-map {path} (an uncompressed .npy array is needed): "
                    f"{e}") from e
  if images.dtype != np.uint8:
    raise DataError(f"{path}: streamed images must be uint8 (0..255), got dtype "
                    f"{images.dtype}; convert once, e.g. np.save(path, "
                    f"np.round(x * 255).astype(np.uint8)) for floats in [0, 1]")
  if not images.flags.c_contiguous:
    raise DataError(f"{path} is stored in Fortran order; save it in C order "
                    f"(np.save(path, np.ascontiguousarray(x)))")
  return images


def _read(path: Path, what: str) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise DataError(f"cannot read {what} file {path}: {e}") from e


def load_npy_dir(directory: str | os.PathLike[str], split: str = "train", *,
                 num_classes: int | None = None, name: str | None = None) -> ImageDataset:
  """The `split` of an npy source, its images memory-mapped (read-only)."""
  directory = Path(directory)
  name = name or f"{PREFIX}{directory}:{split}"
  if not directory.is_dir():
    raise DataError(f"npy directory not found: {directory}")
  suffix = _suffix(directory, split)
  # The labels are the images' pair: images_test.npy never takes labels.npy.
  label_path = directory / f"labels{suffix}.npy" if suffix is not None else None
  if label_path is None or not label_path.is_file():
    raise DataError(f"{directory}: expected images.npy and labels.npy (or "
                    f"images_{split}.npy and labels_{split}.npy), found "
                    f"{sorted(p.name for p in directory.glob('*.npy'))}")
  if split != "train" and not suffix:
    raise MissingSplitError(
        f"{directory} has no {split!r} split; store it as images_{split}.npy / "
        f"labels_{split}.npy, or give the {split} set separately "
        f"(--test-data SOURCE, data.test_source)")
  images = _open_images(directory / f"images{suffix}.npy")
  labels = _read(label_path, "labels")
  names_path = directory / "class_names.npy"
  class_names = _read(names_path, "class names").tolist() if names_path.is_file() else None
  # make_dataset's checks of uint8 C-order images are views: nothing is copied.
  return make_dataset(images, labels, num_classes, name=name, class_names=class_names)


def check_used_as_stored(private: ImageDataset, image_shape: tuple[int, int, int],
                         source: str) -> None:
  """Refuses to resize or recolour memory-mapped images: the result would be a
  whole copy in memory, which is what streaming avoids."""
  if arrays.is_memory_mapped(private.images) and private.image_shape != tuple(image_shape):
    shown = "x".join(map(str, image_shape))
    raise DataError(f"{private.name}: the memory-mapped images are "
                    f"{'x'.join(map(str, private.image_shape))} (HxWxC) but the run's are "
                    f"{shown} ({source}); resizing or converting them would read the whole "
                    f"set into memory: store images.npy as uint8 {shown} instead")


def write_npy_dir(out: str | os.PathLike[str], splits: dict, *,
                  class_names: tuple[str, ...] | None = None,
                  image_size: int | None = None) -> dict:
  """Writes an npy source batch by batch: splits[name] = (examples, iterator of (uint8
  NHWC images, labels) batches), each resized to image_size x image_size if given.

  `out` must not exist or be an empty directory. Everything is written into a
  sibling staging directory first and renamed to `out` only when every split is
  complete, so a failed or interrupted conversion leaves no half-written source
  (its staging directory, which this function created, is removed).
  Returns {split: image shape}.
  """
  from vpntk_jax.data.transforms import resize_images  # pylint: disable=import-outside-toplevel
  out = Path(out).expanduser()
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise DataError(f"{out} exists and is not an empty directory; choose a new --out")
  staging = out.with_name(f".{out.name}.partial")
  if staging.exists():
    raise DataError(f"{staging} exists (an interrupted conversion?); remove it or choose "
                    f"another --out")
  staging.mkdir(parents=True)
  shapes = {}
  try:
    for split, (count, batches) in splits.items():
      suffix = "" if split == "train" else f"_{split}"
      images, labels, filled = None, np.zeros(count, np.int64), 0
      for x, y in batches:
        x = np.asarray(x)
        if x.ndim == 3:
          x = x[..., None]
        if x.dtype != np.uint8 or x.ndim != 4:
          raise DataError(f"split {split!r}: expected uint8 images (N, H, W[, C]), got "
                          f"{x.dtype} {x.shape}")
        if image_size is not None:
          x = resize_images(x, image_size)
        if images is None:
          images = np.lib.format.open_memmap(staging / f"images{suffix}.npy", mode="w+",
                                             dtype=np.uint8, shape=(count,) + x.shape[1:])
        if x.shape[1:] != images.shape[1:] or filled + len(x) > count:
          raise DataError(f"split {split!r}: batch of {x.shape} does not fit the "
                          f"{images.shape} set begun (images of differing size, or more "
                          f"than the {count} examples recorded)")
        images[filled:filled + len(x)] = x
        labels[filled:filled + len(x)] = np.asarray(y).reshape(-1)
        filled += len(x)
      if images is None or filled != count:
        raise DataError(f"split {split!r}: read {filled} examples, {count} recorded")
      images.flush()
      shapes[split] = images.shape
      del images
      np.save(staging / f"labels{suffix}.npy", labels)
    if class_names:
      np.save(staging / "class_names.npy", np.asarray(class_names))
    if out.exists():
      out.rmdir()  # empty, checked above
    os.replace(staging, out)
  except BaseException:
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return shapes
