"""Deterministic, data-independent image transforms (applied before any features)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import arrays
from vpntk_jax.data.dataset import ImageDataset
from vpntk_jax.errors import DataError

_CHUNK = 1024


@functools.partial(jax.jit, static_argnums=(1, 2))
def _resize_chunk(images: jax.Array, height: int, width: int) -> jax.Array:
  x = images.astype(jnp.float32)
  n, _, _, c = x.shape
  # antialias: downsizing averages instead of aliasing; upsizing is bilinear.
  y = jax.image.resize(x, (n, height, width, c), method="bilinear", antialias=True)
  return jnp.round(jnp.clip(y, 0, 255)).astype(jnp.uint8)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """uint8 NHWC images -> uint8 (N, size, size, C), bilinear, in fixed-size chunks."""
  if not (isinstance(size, (int, np.integer)) and size >= 4):
    raise DataError(f"image size must be an integer >= 4, got {size!r}")
  if images.shape[1:3] == (size, size):
    return images
  out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
  for rows in arrays.consecutive_rows(len(images), _CHUNK):
    chunk, _ = arrays.padded_chunk(images, rows, _CHUNK)
    out[rows] = np.asarray(_resize_chunk(jnp.asarray(chunk), size, size))[:len(rows)]
  return out


def resize_dataset(dataset: ImageDataset, size: int | None) -> ImageDataset:
  """The dataset at size x size (None: unchanged). Resizing is public post-processing."""
  if size is None or dataset.image_shape[:2] == (size, size):
    return dataset
  return dataclasses.replace(dataset, images=resize_images(dataset.images, size),
                             name=f"{dataset.name}@{size}x{size}")
