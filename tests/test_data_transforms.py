"""vpntk_jax/data/transforms.py: resizing images."""

import numpy as np
import pytest

from vpntk_jax.data import resize_images
from vpntk_jax.errors import DataError


def test_resize_keeps_constant_images_and_identity():
  images = np.full((3, 28, 28, 1), 77, np.uint8)
  out = resize_images(images, 64)
  assert out.shape == (3, 64, 64, 1) and np.all(out == 77)
  assert resize_images(images, 28) is images
  with pytest.raises(DataError, match="image size"):
    resize_images(images, 2)
