"""The in-memory dataset type and validation of user-supplied arrays."""

from __future__ import annotations

import dataclasses

import numpy as np

from vpntk_jax.errors import DataError

# Listing every bad label value would flood the message for badly broken files.
_MAX_LISTED_VALUES = 10


# eq=False: field-wise equality on arrays is ambiguous and would also make
# instances unhashable; identity semantics are what callers need.
@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
  """Images with integer class labels, ready for feature extraction.

  Attributes:
    images: uint8 array, NHWC (grayscale has C=1), C-contiguous; in memory, or a
      read-only view of a memory-mapped file (`data.npy`), read in chunks.
    labels: int32 array of shape (N,), values in [0, num_classes).
    num_classes: number of classes (some may have zero examples).
    name: human-readable origin, e.g. "fashion_mnist:train".
    class_names: optional names, one per class.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str
  class_names: tuple[str, ...] | None = None

  def __post_init__(self) -> None:
    # Cheap structural checks only; value checks live in check_images_and_labels.
    imgs, labels = self.images, self.labels
    if not isinstance(imgs, np.ndarray) or imgs.dtype != np.uint8 or imgs.ndim != 4:
      raise DataError(f"{self.name}: images must be a uint8 NHWC array, got "
                      f"{_describe(imgs)}")
    if (not isinstance(labels, np.ndarray) or labels.dtype != np.int32
        or labels.shape != imgs.shape[:1]):
      raise DataError(f"{self.name}: labels must be int32 of shape {imgs.shape[:1]}, got "
                      f"{_describe(labels)}")
    if self.num_classes < 1:
      raise DataError(f"{self.name}: num_classes must be >= 1, got {self.num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise DataError(f"{self.name}: labels must lie in [0, {self.num_classes}), got "
                      f"[{labels.min()}, {labels.max()}]")
    if self.class_names is not None and len(self.class_names) != self.num_classes:
      raise DataError(f"{self.name}: {len(self.class_names)} class names for "
                      f"{self.num_classes} classes")

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    h, w, c = self.images.shape[1:]
    return (int(h), int(w), int(c))

  def __len__(self) -> int:
    return int(self.images.shape[0])

  def class_counts(self) -> np.ndarray:
    """Examples per class, shape (num_classes,); zero for empty classes."""
    return np.bincount(self.labels, minlength=self.num_classes)


def _describe(x: object) -> str:
  if isinstance(x, np.ndarray):
    return f"dtype {x.dtype}, shape {x.shape}"
  return type(x).__name__


def _list_values(values: np.ndarray) -> str:
  shown = ", ".join(str(v) for v in values[:_MAX_LISTED_VALUES])
  more = len(values) - _MAX_LISTED_VALUES
  return shown + (f", ... ({more} more)" if more > 0 else "")


def _to_uint8(images: np.ndarray, name: str) -> np.ndarray:
  """Converts uint8/float[0,1]/small-integer pixels to uint8."""
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating):
    bad = np.count_nonzero(~np.isfinite(images))
    if bad:
      raise DataError(f"{name}: {bad} pixel values are NaN or infinite")
    lo, hi = float(images.min()), float(images.max())
    if lo < 0.0 or hi > 1.0:
      raise DataError(f"{name}: float images must lie in [0, 1], got values in "
                      f"[{lo:g}, {hi:g}] (scale 0..255 data by 1/255 or pass uint8)")
    return np.round(images * 255.0).astype(np.uint8)
  if np.issubdtype(images.dtype, np.integer):
    # Integer pixels in other dtypes (e.g. int64 from a JSON/CSV export) are
    # unambiguous as long as they fit the 0..255 range.
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi > 255:
      raise DataError(f"{name}: integer images must lie in [0, 255], got values in "
                      f"[{lo}, {hi}]")
    return images.astype(np.uint8)
  raise DataError(f"{name}: images must be uint8 or float in [0, 1], got dtype {images.dtype}")


def _check_images(images: object, name: str) -> np.ndarray:
  """Returns uint8 NHWC contiguous images or raises DataError."""
  try:
    images = np.asarray(images)
  except (TypeError, ValueError) as e:
    raise DataError(f"{name}: images cannot be converted to an array: {e}") from e
  if images.ndim == 3:
    images = images[..., None]
  elif images.ndim != 4:
    raise DataError(f"{name}: images must be NHW or NHWC, got shape {images.shape}")
  if images.shape[-1] not in (1, 3):
    raise DataError(f"{name}: images must have 1 or 3 channels (NHWC), got shape "
                    f"{images.shape}")
  if images.shape[0] == 0:
    raise DataError(f"{name}: the dataset is empty (0 images)")
  if images.shape[1] == 0 or images.shape[2] == 0:
    raise DataError(f"{name}: images have zero height or width, shape {images.shape}")
  return np.ascontiguousarray(_to_uint8(images, name))


def _check_labels(labels: object, n: int, num_classes: int | None,
                  name: str) -> tuple[np.ndarray, int]:
  """Returns (int32 labels, num_classes) or raises DataError."""
  labels = np.asarray(labels)
  if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{name}: labels must be integers, got dtype {labels.dtype}")
  if labels.shape != (n,):
    raise DataError(f"{name}: labels must have shape ({n},) to match {n} images, got "
                    f"{labels.shape}")
  if num_classes is not None:
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
      raise DataError(f"{name}: num_classes must be a positive integer, got {num_classes!r}")
    num_classes = int(num_classes)
  lo, hi = int(labels.min()), int(labels.max())
  limit = num_classes if num_classes is not None else hi + 1
  if lo < 0 or hi >= limit:
    bad = np.unique(labels[(labels < 0) | (labels >= limit)])
    raise DataError(f"{name}: labels must lie in [0, {limit}), found out-of-range "
                    f"values {_list_values(bad)}")
  return labels.astype(np.int32, copy=False), limit


def check_images_and_labels(images: object, labels: object, num_classes: int | None = None,
                            *, name: str = "dataset") -> tuple[np.ndarray, np.ndarray, int]:
  """Validates and normalises user-supplied images and labels.

  Args:
    images: uint8 or float in [0, 1]; NHW or NHWC with C in {1, 3}.
    labels: integer class ids, shape (N,).
    num_classes: number of classes; defaults to max(label) + 1.
    name: dataset name used in error messages.

  Returns:
    (uint8 NHWC contiguous images, int32 labels, num_classes).

  Raises:
    DataError: if anything is malformed; the message says what and where.
  """
  imgs = _check_images(images, name)
  labs, k = _check_labels(labels, imgs.shape[0], num_classes, name)
  return imgs, labs, k


def make_dataset(images: object, labels: object, num_classes: int | None = None, *,
                 name: str = "dataset",
                 class_names: tuple[str, ...] | list[str] | None = None) -> ImageDataset:
  """Validates arrays and wraps them in an ImageDataset. Class names stored with the
  data declare its classes: without `num_classes` there are as many as names (a
  class nobody has stays one, a label past the names is refused), as for tfds."""
  if num_classes is None and class_names is not None and len(class_names):
    num_classes = len(class_names)
  imgs, labs, k = check_images_and_labels(images, labels, num_classes, name=name)
  names = tuple(str(c) for c in class_names) if class_names is not None else None
  if names is not None and len(names) != k:
    names = None  # A caller-widened num_classes makes the fixed names meaningless.
  return ImageDataset(images=imgs, labels=labs, num_classes=k, name=name, class_names=names)
