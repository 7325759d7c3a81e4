"""Loaders for user files: .npz archives and folders of images per class."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.errors import DataError, MissingSplitError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif"})
# Pillow modes whose pixels carry no colour.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})
# Folder names treated as splits rather than classes in root/<split>/<class>/.
_SPLIT_DIRS = frozenset({"train", "test", "val", "validation"})


def _npz_key(keys: list[str], split: str, bases: tuple[str, ...]) -> str | None:
  # Split-specific keys ("x_test", as in Keras' mnist.npz) win over plain ones.
  for base in bases:
    if f"{base}_{split}" in keys:
      return f"{base}_{split}"
  for base in bases:
    if base in keys:
      return base
  return None


def load_npz(path: str | os.PathLike[str], split: str = "train", *,
             num_classes: int | None = None, name: str | None = None) -> ImageDataset:
  """Loads `images`/`x` and `labels`/`y` arrays (optionally `x_<split>`...) from a .npz.

  Optional `class_names` holds one name per class. A file without
  split-specific keys holds only the "train" split.
  """
  path = Path(path)
  name = name or f"{path}:{split}"
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = list(npz.keys())
      img_key = _npz_key(keys, split, ("images", "x"))
      lab_key = _npz_key(keys, split, ("labels", "y"))
      if img_key is None or lab_key is None:
        raise DataError(f"{path}: expected arrays 'images' (or 'x') and 'labels' (or 'y'), "
                        f"found {keys}")
      if split != "train" and not img_key.endswith(f"_{split}"):
        raise MissingSplitError(
            f"{path} has no {split!r} split (arrays: {keys}); store it as "
            f"'images_{split}'/'labels_{split}', or give the {split} set separately "
            f"(--test-data SOURCE, data.test_source)")
      images, labels = npz[img_key], npz[lab_key]
      class_names = npz["class_names"].tolist() if "class_names" in keys else None
  except FileNotFoundError as e:
    raise DataError(f"npz file not found: {path}") from e
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read npz file {path}: {e}") from e
  return make_dataset(images, labels, num_classes, name=name, class_names=class_names)


def _subdirs(directory: Path) -> list[Path]:
  return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
  return sorted(p for p in directory.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def _class_root(root: Path, split: str) -> Path:
  """Returns the folder whose subfolders are the classes for `split`."""
  subdirs = _subdirs(root)
  if subdirs and all(d.name in _SPLIT_DIRS for d in subdirs):
    if not (root / split).is_dir():
      raise DataError(f"image folder {root} has splits {[d.name for d in subdirs]} "
                      f"but no {split!r}")
    return root / split
  if split != "train":
    raise MissingSplitError(
        f"image folder {root} has no {split!r} split; use a layout "
        f"{root}/<split>/<class>/<image>, or give the {split} set separately "
        f"(--test-data SOURCE, data.test_source)")
  return root


def _read_image(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
  """Decodes one file to (H, W) uint8 if grayscale else (H, W, 3), plus its (W, H) size."""
  from PIL import Image, UnidentifiedImageError  # Pillow is only needed here.
  try:
    with Image.open(path) as img:
      img.load()
      gray = img.mode in _GRAY_MODES
      return np.asarray(img.convert("L" if gray else "RGB")), img.size
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise DataError(f"cannot decode image file {path}: {e}") from e


def _stack_images(arrays: list[np.ndarray]) -> np.ndarray:
  """Stacks as (N, H, W) if all are grayscale, else (N, H, W, 3)."""
  if all(a.ndim == 2 for a in arrays):
    return np.stack(arrays)
  # Replicating gray into RGB is exactly what Pillow's L->RGB conversion does.
  return np.stack([np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays])


def load_image_folder(root: str | os.PathLike[str], split: str = "train", *,
                      num_classes: int | None = None, name: str | None = None) -> ImageDataset:
  """Loads root/<class>/<image> (or root/<split>/<class>/<image>).

  Classes are the sorted subfolder names; all images must share one size.
  Images become grayscale (C=1) if all are grayscale, else RGB.
  """
  root = Path(root)
  name = name or f"{root}:{split}"
  class_root = _class_root(root, split)
  class_dirs = _subdirs(class_root)
  if not class_dirs:
    raise DataError(f"image folder {class_root} has no class subfolders; expected "
                    f"{class_root}/<class>/<image>.png")
  arrays, labels, first = [], [], None
  for label, class_dir in enumerate(class_dirs):
    for path in _image_files(class_dir):
      arr, size = _read_image(path)
      if first is None:
        first = (path, size)
      elif size != first[1]:
        raise DataError(f"images in {class_root} have mixed sizes: {first[0]} is "
                        f"{first[1][0]}x{first[1][1]} but {path} is "
                        f"{size[0]}x{size[1]} (WxH); resize them to one size")
      arrays.append(arr)
      labels.append(label)
  if not arrays:
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise DataError(f"no images ({exts}) found under {class_root}")
  arr = _stack_images(arrays)
  return make_dataset(arr, np.asarray(labels, dtype=np.int32),
                      num_classes or len(class_dirs), name=name,
                      class_names=[d.name for d in class_dirs])
