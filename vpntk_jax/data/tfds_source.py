"""TensorFlow Datasets loader. TensorFlow is imported lazily, only in here.

`import vpntk_jax.data` must work without TensorFlow, so nothing at module
level may import tensorflow or tensorflow_datasets.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.errors import DataError

DEFAULT_CELEBA_ATTRIBUTE = "Male"


def _import_tfds() -> Any:
  try:
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"tfds: sources need tensorflow and tensorflow-datasets "
                    f"(pip install 'vpntk_jax[tfds]'): {e}") from e
  try:
    # TF would otherwise grab the whole GPU that JAX needs; it only decodes data here.
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    pass  # TF already initialised its devices; too late to hide the GPU.
  return tfds


# Examples per tf.data batch when reading a split: large enough that the
# per-step Python overhead is negligible, small enough to stay a minor copy.
_BATCH = 4096


def _load(tfds: Any, name: str, split: str, data_dir: str | None,
          download: bool) -> tuple[Any, Any]:
  """Calls tfds.load (feature dicts) and turns its failures into DataErrors.

  With download (network allowed) and no data_dir, TFDS first looks for a prepared
  copy in its public bucket (try_gcs), which for celeb_a avoids the Google Drive
  download and its quota; datasets not there are downloaded and prepared as usual.
  Without download nothing touches the network. TFDS refuses try_gcs together
  with an explicit data_dir, so a given data_dir keeps try_gcs off.
  """
  where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  try:
    return tfds.load(name, split=split, data_dir=data_dir, download=download,
                     try_gcs=bool(download and data_dir is None),
                     as_supervised=False, with_info=True)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"unknown TFDS dataset {name!r}: {str(e).splitlines()[0]}") from e
  except AssertionError as e:
    # TFDS signals "not downloaded/prepared" with a bare AssertionError.
    if download:
      raise DataError(f"TFDS dataset {name!r} failed to load from {where}: {e}") from e
    raise DataError(f"TFDS dataset {name!r} is not prepared in {where}; pass "
                    f"download=True (CLI: --download) to fetch it, or point data_dir "
                    f"(--data-dir) at a prepared copy") from e
  except ValueError as e:
    raise DataError(f"TFDS dataset {name!r}, split {split!r}: {e}") from e


def _materialise(tfds: Any, ds: Any, ds_name: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads a tf.data.Dataset of (image, label) fully into numpy arrays.

  Not tfds.load(batch_size=-1): it batches by the split size recorded in the
  dataset info, and where that is unknown (e.g. under tfds.testing.mock_data)
  TF aborts the whole process with std::length_error instead of raising.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  try:
    for x, y in tfds.as_numpy(ds.batch(_BATCH)):
      images.append(x)
      labels.append(y)
  except tf.errors.InvalidArgumentError as e:
    raise DataError(f"{ds_name}: cannot stack the images into one array (do they "
                    f"differ in size?): {str(e).splitlines()[0]}") from e
  if not images:
    raise DataError(f"{ds_name}: the split is empty (0 images)")
  return np.concatenate(images), np.concatenate(labels)


def _class_names(info: Any, label_key: str) -> tuple[str, ...] | None:
  feature = info.features[label_key] if label_key in info.features else None
  names = getattr(feature, "names", None)
  return tuple(names) if names else None


def _check_attribute(info: Any, name: str, attribute: str) -> None:
  attrs = info.features["attributes"] if "attributes" in info.features else None
  if attrs is None or not hasattr(attrs, "keys"):
    raise DataError(f"TFDS dataset {name!r} has no 'attributes' feature, so "
                    f"label_attribute={attribute!r} cannot be used")
  if attribute not in attrs.keys():
    raise DataError(f"TFDS dataset {name!r} has no attribute {attribute!r}; "
                    f"available: {', '.join(sorted(attrs.keys()))}")


def _supervised_keys(info: Any, name: str) -> tuple[str, str]:
  keys = info.supervised_keys
  if keys and len(keys) == 2 and all(isinstance(k, str) for k in keys):
    return keys[0], keys[1]
  if "image" in info.features and "label" in info.features:
    return "image", "label"
  raise DataError(f"TFDS dataset {name!r} has no (image, label) structure "
                  f"(features: {sorted(info.features.keys())}); pass label_attribute "
                  f"if it has boolean attributes")


def _labelled_pairs(tfds: Any, name: str, split: str, data_dir: str | None, download: bool,
                    label_attribute: str | None) -> tuple[Any, Any, tuple[str, ...] | None]:
  """(tf.data of (image, label), info, class names) of a split, nothing read yet."""
  if name == "celeb_a" and label_attribute is None:
    label_attribute = DEFAULT_CELEBA_ATTRIBUTE
  ds, info = _load(tfds, name, split, data_dir, download)
  if label_attribute is not None:
    _check_attribute(info, name, label_attribute)
    if "image" not in info.features:
      raise DataError(f"TFDS dataset {name!r} has no 'image' feature")
    # Select in the tf.data pipeline so unused features are never materialised.
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    pairs = ds.map(lambda f: (f["image"], tf.cast(f["attributes"][label_attribute], tf.int32)))
    return pairs, info, (f"not {label_attribute}", label_attribute)
  image_key, label_key = _supervised_keys(info, name)
  return ds.map(lambda f: (f[image_key], f[label_key])), info, _class_names(info, label_key)


def load_tfds(name: str, split: str = "train", *, data_dir: str | None = None,
              download: bool = False, label_attribute: str | None = None,
              num_classes: int | None = None) -> ImageDataset:
  """Loads a whole TFDS split into memory.

  Datasets with an 'attributes' feature (celeb_a) are labelled by one boolean
  attribute (default "Male"), giving 2 classes; others use their supervised label.
  Memory: the full split is held in RAM (celeb_a train at 218x178x3 is ~19 GB);
  `stream_tfds` and `vpntk to-npy` write a split to an npy source batch by batch.
  """
  tfds = _import_tfds()
  ds_name = f"tfds:{name}:{split}"
  pairs, _, class_names = _labelled_pairs(tfds, name, split, data_dir, download,
                                          label_attribute)
  images, labels = _materialise(tfds, pairs, ds_name)
  k = num_classes or (len(class_names) if class_names else None)
  return make_dataset(images, labels, k, name=ds_name, class_names=class_names)


def stream_tfds(name: str, split: str = "train", *, data_dir: str | None = None,
                download: bool = False, label_attribute: str | None = None,
                batch_size: int = _BATCH) -> tuple[int, tuple[str, ...] | None, Iterator]:
  """(examples, class names, iterator of (images, labels) numpy batches) of a split,
  read batch by batch: the split is never in memory whole."""
  tfds = _import_tfds()
  pairs, info, class_names = _labelled_pairs(tfds, name, split, data_dir, download,
                                             label_attribute)
  try:
    count = int(info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    count = 0
  if count <= 0:  # not recorded (e.g. tfds.testing.mock_data): count the labels
    count = sum(len(y) for _, y in tfds.as_numpy(pairs.map(lambda x, y: (0, y)).batch(_BATCH)))
  return count, class_names, iter(tfds.as_numpy(pairs.batch(batch_size)))
