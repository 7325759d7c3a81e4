"""The labelled feature sum sum_i phi(x_i) onehot(y_i)^T for explicit feature maps.

DP-MERF's and DP-MEPF's features are small enough to form per example, so
their private sum is one matmul per fixed-size chunk (one compilation for any
dataset size; padding rows get weight 0).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import arrays
from vpntk_jax import sharding


def _chunk_sum(feature_fn, num_classes, params, images, labels, mask):
  # Full float32 matmuls on the private side: the norms bound the sensitivity.
  with jax.default_matmul_precision("float32"):
    phi = feature_fn(params, images) * mask[:, None]
  return phi.T @ jax.nn.one_hot(labels, num_classes)


@functools.lru_cache(maxsize=16)
def _chunk_sum_fn(feature_fn, num_classes: int, mesh):
  return sharding.summed_over_rows(functools.partial(_chunk_sum, feature_fn, num_classes),
                                   mesh, 3)


def labelled_feature_sum(feature_fn: Callable, params, images: np.ndarray, labels: np.ndarray,
                         num_classes: int, *, chunk_size: int,
                         progress: Callable[[int], None] | None = None,
                         mesh=None) -> np.ndarray:
  """(D, C) float64 sum of per-example features by class.

  Args:
    feature_fn: hashable (params, uint8 NHWC chunk) -> (chunk, D) features,
      each of norm <= the map's bound.
    mesh: optional 1-D device mesh (`vpntk_jax.sharding.data_mesh`): each chunk
      is split over its devices.
  """
  labels = np.asarray(labels, np.int32)
  chunk_size = sharding.round_up_to_devices(chunk_size, mesh)
  chunk_fn, place = _chunk_sum_fn(feature_fn, num_classes, mesh), sharding.row_placer(mesh)
  total = None
  for rows in arrays.consecutive_rows(len(labels), chunk_size):
    x, mask = arrays.padded_chunk(images, rows, chunk_size)
    lab, _ = arrays.padded_chunk(labels, rows, chunk_size)
    part = np.asarray(chunk_fn(params, place(x), place(lab), place(mask)))
    # Added in place in float64: a new float64 array per chunk (DP-MEPF's VGG16:
    # 44 MB) cost as much as a fifth of the chunk's compute in page faults.
    if total is None:
      total = part.astype(np.float64)
    else:
      np.add(total, part, out=total)
    if progress is not None:
      progress(int(rows[-1]) + 1)
  return total


def labelled_feature_mean(phi: jax.Array, num_classes: int) -> jax.Array:
  """(C * n, D) features of a class-grouped batch -> (D, C) labelled mean."""
  return jnp.einsum("cnd->dc", phi.reshape(num_classes, -1, phi.shape[-1])) / phi.shape[0]
