"""DP-MEPF's feature map: moments of a public extractor's perceptual features.

u(x) = e(x) / ||e(x)||, the public extractor's activation maps (all stages,
flattened, and its hidden layer) scaled to unit norm with the shared safety
margin. phi(x) = [u(x), w * u(x)^2]: first and second moments are released
together as ONE Gaussian mechanism on the stacked vector. Since
||u^2|| <= ||u||^2 <= 1, ||phi|| <= sqrt(1 + w^2) for any input; the weight w
sets how the noise splits between the two moments (w = 1: equal shares), and
the accountant charges the single release exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax.features import labelled, ntk


MAX_CHUNK_FLOATS = 2**26  # 256 MB of float32 features per chunk


def _maps(extractor, params, images, image_shape: tuple) -> jax.Array:
  """(N, F) perceptual features of uint8 or [0, 1] images, non-finite entries zeroed."""
  x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
  x = x.reshape((x.shape[0],) + image_shape)
  e = extractor.apply({"params": params}, x, features="maps")
  return jnp.where(jnp.isfinite(e), e, 0.0)


def per_example_moments(extractor, params, images, image_shape: tuple,
                        weight: float) -> jax.Array:
  """(N, 2F) phi(x) = [u, w u^2] of each image, u = e / ||e|| (with the safety margin)."""
  e = _maps(extractor, params, images, image_shape)
  u = e * ntk.normalising_scale(jnp.sum(jnp.square(e), -1))[:, None]
  return jnp.concatenate([u, weight * jnp.square(u)], axis=-1)


def class_moment_mean(extractor, params, x_grouped, image_shape: tuple,
                      weight: float) -> jax.Array:
  """(2F, C) labelled mean of phi over a class-grouped batch (C, n, ...):
  `labelled.labelled_feature_mean(per_example_moments(...), C)` up to float rounding.

  Formed as s-weighted class sums of e and e^2 (s = 1 / ||e||), so neither u nor
  the (C n, 2F) phi is ever written: at VGG16's 276,480 features per image these
  are passes of about 1 GB over memory per 500 images, forward and backward."""
  num_classes, n = x_grouped.shape[:2]
  e = _maps(extractor, params, x_grouped.reshape((num_classes * n,) + x_grouped.shape[2:]),
            image_shape)
  scale = ntk.normalising_scale(jnp.sum(jnp.square(e), -1)).reshape(num_classes, n)
  e = e.reshape(num_classes, n, -1)
  first = jnp.einsum("cn,cnf->fc", scale, e)
  second = weight * jnp.einsum("cn,cnf->fc", jnp.square(scale), jnp.square(e))
  return jnp.concatenate([first, second], axis=0) / (num_classes * n)


@functools.lru_cache(maxsize=4)
def _moment_fn(extractor, image_shape: tuple, weight: float):
  """Hashable (params, images uint8 or [0, 1]) -> (N, 2F) stacked moments."""
  def fn(params, images):
    return per_example_moments(extractor, params, images, image_shape, weight)
  return fn


@dataclasses.dataclass(frozen=True, eq=False)
class PerceptualFeatureMap:
  """First and second moments of normalised perceptual features (labelled)."""
  extractor: Any
  extractor_params: Any
  image_shape: tuple[int, int, int]
  second_moment_weight: float = 1.0
  # Rows per private chunk; None: as many as keep one chunk's features near
  # MAX_CHUNK_FLOATS (VGG19's 606k-wide features would need 2.5 GB at 1024 rows).
  chunk_size: int | None = None

  @property
  def norm_bound(self) -> float:
    return math.sqrt(1.0 + self.second_moment_weight ** 2)

  @property
  def _fn(self) -> Callable:
    return _moment_fn(self.extractor, tuple(self.image_shape), float(self.second_moment_weight))

  def private_sum(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                  progress: Callable[[int], None] | None = None, mesh=None) -> dict:
    chunk_size = self.chunk_size or int(np.clip(
        MAX_CHUNK_FLOATS // self.template(1)["mepf"].shape[0], 16, 1024))
    total = labelled.labelled_feature_sum(self._fn, self.extractor_params, images, labels,
                                          num_classes, chunk_size=chunk_size,
                                          progress=progress, mesh=mesh)
    return {"mepf": jnp.asarray(total, jnp.float32)}

  def synthetic_mean(self, x_grouped: jax.Array) -> dict:
    return {"mepf": class_moment_mean(self.extractor, self.extractor_params, x_grouped,
                                      tuple(self.image_shape), float(self.second_moment_weight))}

  def template(self, num_classes: int) -> dict:
    dim = jax.eval_shape(self._fn, self.extractor_params,
                         jax.ShapeDtypeStruct((1,) + tuple(self.image_shape), jnp.float32))
    return {"mepf": np.zeros((dim.shape[-1], num_classes), np.float32)}

  def describe(self) -> dict:
    return {"kind": "perceptual-moments", "second_moment_weight": self.second_moment_weight}
