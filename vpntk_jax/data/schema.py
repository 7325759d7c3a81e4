"""The schema of a run (classes, their names, image shape) and fitting private data to it.

What a release looks like must not depend on the private data: two neighbouring
datasets, one with an example relabelled to a class nobody else has or one RGB
image among grey ones, would otherwise give releases of different shapes. So the
schema is read from public information, the real test set (or, for in-memory
data, the test dataset given), and the private set is fitted to it: its labels
are mapped by class name when both sides name their classes, grey images become
RGB when the schema is RGB, and anything else that does not fit is an error.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vpntk_jax.data.dataset import ImageDataset
from vpntk_jax.errors import ConfigError, DataError

NO_TEST_SET_NAME = "no test set"


@dataclasses.dataclass(frozen=True)
class Schema:
  """What every release and synthetic set of a run is shaped by."""
  num_classes: int
  image_shape: tuple[int, int, int] | None  # None: the classes alone (`public_schema`)
  class_names: tuple[str, ...] | None
  source: str  # where it was read, for error messages

  @classmethod
  def of(cls, dataset: ImageDataset) -> "Schema":
    """The schema of a public dataset (the test set)."""
    return cls(num_classes=dataset.num_classes, image_shape=dataset.image_shape,
               class_names=dataset.class_names, source=dataset.name)

  @classmethod
  def declared(cls, classes: tuple[str, ...], image_size: int, channels: int) -> "Schema":
    """The schema a run without a test set declares (data.classes, ...)."""
    return cls(num_classes=len(classes), image_shape=(image_size, image_size, channels),
               class_names=tuple(classes), source="the declared schema (data.classes)")

  def empty_dataset(self) -> ImageDataset:
    """A test set of no images that carries this schema: the run evaluates nothing."""
    return ImageDataset(images=np.zeros((0, *self.image_shape), np.uint8),
                        labels=np.zeros((0,), np.int32), num_classes=self.num_classes,
                        name=NO_TEST_SET_NAME, class_names=self.class_names)


def public_schema(source: str, *, classes: tuple[str, ...] | None = None,
                  test: ImageDataset | None = None, names: tuple[str, ...] | None = None,
                  image_shape: tuple[int, int, int] | None = None) -> Schema:
  """The classes of the data `vpntk pretrain`, `pretrain-diffusion` and `to-npy` read,
  taken as a run takes them: declared (`classes`: --classes, data.classes), else
  the test split's (`Schema.of`), else the class names stored with the source
  (`names`). Never counted from the train labels, where one stray label would add
  a class and a missing class would drop one.

  `image_shape` is recorded where the test split does not give one (None where
  the caller only needs the classes).
  """
  if classes:
    return Schema(num_classes=len(classes), image_shape=image_shape,
                  class_names=tuple(classes), source="--classes, declared")
  if test is not None:
    return Schema.of(test)
  if names:
    return Schema(num_classes=len(names), image_shape=image_shape, class_names=tuple(names),
                  source=f"the class names stored with {source}")
  raise ConfigError(f"{source} has no test split and stores no class names, so nothing "
                    f"declares its classes (its train labels cannot: a stray label would "
                    f"add a class, a missing class drop one); declare them with --classes "
                    f"NAME,NAME,... in label order, or give it a test split")


def check_split_labels(labels: np.ndarray, schema: Schema, split: str) -> None:
  """A DataError naming the split, its first label outside [0, schema.num_classes) and
  that range, if it has one. For data its user may see (public data, a conversion):
  a run's private labels go through `fit_to_schema`, which names none."""
  labels = np.asarray(labels)
  bad = np.flatnonzero((labels < 0) | (labels >= schema.num_classes))
  if bad.size:
    raise DataError(f"the {split} split has label {int(labels[bad[0]])}, outside the valid "
                    f"range [0, {schema.num_classes}) ({schema.num_classes} classes, from "
                    f"{schema.source})")


def with_public_schema(data: ImageDataset, schema: Schema, split: str) -> ImageDataset:
  """`data` (one split of public data) with the schema's classes, its labels checked
  against them (`check_split_labels`)."""
  check_split_labels(data.labels, schema, split)
  return ImageDataset(images=data.images, labels=data.labels, num_classes=schema.num_classes,
                      name=data.name, class_names=schema.class_names)


def _relabel_by_name(private: ImageDataset, schema: Schema) -> np.ndarray:
  index = {name: i for i, name in enumerate(schema.class_names)}
  unknown = [name for name in private.class_names if name not in index]
  if unknown:
    raise DataError(f"{private.name}: classes {unknown} are not among the classes of "
                    f"{schema.source} ({list(schema.class_names)}); the test set declares "
                    f"the classes a run has")
  mapping = np.asarray([index[name] for name in private.class_names], np.int32)
  return mapping[private.labels]


def fit_to_schema(private: ImageDataset, schema: Schema) -> ImageDataset:
  """`private` with the schema's classes and channels, or a DataError naming the misfit.

  The result's num_classes and class_names are the schema's, whatever the
  private labels hold.
  """
  labels = private.labels
  if private.class_names is not None and schema.class_names is not None:
    labels = _relabel_by_name(private, schema)
  elif labels.size and labels.max() >= schema.num_classes:
    raise DataError(f"{private.name}: labels must lie in [0, {schema.num_classes}), the "
                    f"classes of {schema.source}; some private labels are larger")
  images = private.images
  channels, expected = images.shape[-1], schema.image_shape[-1]
  if channels != expected:
    if channels != 1:
      raise DataError(f"{private.name}: images have {channels} channels but {schema.source} "
                      f"has {expected}; convert the private images to {expected} channel(s)")
    # Grey to RGB is lossless (Pillow's L->RGB does the same).
    images = np.ascontiguousarray(np.repeat(images, expected, axis=-1))
  if images.shape[1:3] != schema.image_shape[:2]:
    raise DataError(f"{private.name}: images are {images.shape[1]}x{images.shape[2]} but "
                    f"{schema.source} has {schema.image_shape[0]}x{schema.image_shape[1]}; "
                    f"set data.image_size (--image-size) to resize both")
  return ImageDataset(images=images, labels=labels, num_classes=schema.num_classes,
                      name=private.name, class_names=schema.class_names)
