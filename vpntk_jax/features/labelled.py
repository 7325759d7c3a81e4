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


def _chunk_sum(feature_fn, num_classes, params, images, labels, mask):
  # Full float32 matmuls on the private side: the norms bound the sensitivity.
  with jax.default_matmul_precision("float32"):
    phi = feature_fn(params, images) * mask[:, None]
  return phi.T @ jax.nn.one_hot(labels, num_classes)


@functools.lru_cache(maxsize=16)
def _chunk_sum_fn(feature_fn, num_classes: int, mesh):
  """Jitted chunk sum; with a mesh, rows are split over devices and summed by psum."""
  body = functools.partial(_chunk_sum, feature_fn, num_classes)
  if mesh is None:
    return jax.jit(body)
  from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from vpntk_jax.sharding import DATA_AXIS  # pylint: disable=g-import-not-at-top
  rows = P(DATA_AXIS)
  return jax.jit(jax.shard_map(lambda *args: jax.lax.psum(body(*args), DATA_AXIS), mesh=mesh,
                               in_specs=(P(), rows, rows, rows), out_specs=P()))


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
  place = jnp.asarray
  if mesh is not None:
    from vpntk_jax.sharding import batch_sharding, round_up_to_devices  # pylint: disable=g-import-not-at-top
    chunk_size = round_up_to_devices(chunk_size, mesh)
    place = lambda a: jax.device_put(a, batch_sharding(mesh))
  chunk_fn = _chunk_sum_fn(feature_fn, num_classes, mesh)
  total = None
  for rows in arrays.consecutive_rows(len(labels), chunk_size):
    x, mask = arrays.padded_chunk(images, rows, chunk_size)
    lab, _ = arrays.padded_chunk(labels, rows, chunk_size)
    part = np.asarray(chunk_fn(params, place(x), place(lab), place(mask)), np.float64)
    total = part if total is None else total + part
    if progress is not None:
      progress(int(rows[-1]) + 1)
  return total


def labelled_feature_mean(phi: jax.Array, num_classes: int) -> jax.Array:
  """(C * n, D) features of a class-grouped batch -> (D, C) labelled mean."""
  return jnp.einsum("cnd->dc", phi.reshape(num_classes, -1, phi.shape[-1])) / phi.shape[0]
