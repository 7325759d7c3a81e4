"""NTK features on a frozen public extractor's activations (VP-NTK's feature map).

phi(x) = NTK features of the fixed random network applied to e(x), the
standardised activations of the public extractor. The per-example norm bound
comes from the NTK normalisation after e, so it holds for any extractor,
any input and any resolution; non-finite activations are zeroed first, so
they cannot poison the sum either.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import arrays
from vpntk_jax.features import ntk
from vpntk_jax.features.ntk_map import NTKFeatureMap


@dataclasses.dataclass(frozen=True, eq=False)
class ExtractorNTKFeatureMap:
  """NTKFeatureMap on `extractor` features. The extractor and its statistics are public."""
  extractor: Any  # ConvExtractor
  extractor_params: Any
  feature_mean: np.ndarray
  feature_std: np.ndarray
  image_shape: tuple[int, int, int]
  network: ntk.NTKNetwork
  seed: int = 0
  chunk_size: int = 1024
  norm_bound: float = 1.0

  @property
  def ntk_map(self) -> NTKFeatureMap:
    return NTKFeatureMap(self.network, input_dim=int(np.size(self.feature_mean)), seed=self.seed)

  def features(self, x: jax.Array) -> jax.Array:
    """Images NHWC in [0, 1] -> standardised extractor features (N, F), finite."""
    return standardised_features(self.extractor, self.extractor_params, self.feature_mean,
                                 self.feature_std, x)

  def extract(self, images: np.ndarray, progress: Callable[[int], None] | None = None
              ) -> np.ndarray:
    """uint8 NHWC images -> float32 features, in fixed-size chunks (one compilation)."""
    out = np.empty((len(images), int(np.size(self.feature_mean))), np.float32)
    for rows in arrays.consecutive_rows(len(images), self.chunk_size):
      chunk, _ = arrays.padded_chunk(images, rows, self.chunk_size)
      f = _extract_chunk(self.extractor, self.extractor_params, self.feature_mean,
                         self.feature_std, jnp.asarray(chunk))
      out[rows] = np.asarray(f)[:len(rows)]
      if progress is not None:
        progress(int(rows[-1]) + 1)
    return out

  def private_sum(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                  progress: Callable[[int], None] | None = None, mesh=None) -> ntk.Embedding:
    return self.ntk_map.private_sum(self.extract(images, progress), labels, num_classes,
                                    mesh=mesh)

  def _grouped_features(self, x_grouped: jax.Array) -> jax.Array:
    num_classes, n, _ = x_grouped.shape
    f = self.features(x_grouped.reshape((num_classes * n,) + tuple(self.image_shape)))
    return f.reshape(num_classes, n, -1)

  def synthetic_mean(self, x_grouped: jax.Array) -> ntk.Embedding:
    return self.ntk_map.synthetic_mean(self._grouped_features(x_grouped))

  def products_target(self, target: ntk.Embedding) -> ntk.Embedding:
    return self.ntk_map.products_target(target)

  def synthetic_products(self, target: ntk.Embedding, x_grouped: jax.Array):
    return self.ntk_map.synthetic_products(target, self._grouped_features(x_grouped))

  def template(self, num_classes: int) -> ntk.Embedding:
    return self.ntk_map.template(num_classes)

  def describe(self) -> dict:
    return {"kind": "ntk-on-extractor", "extractor_feature_dim": int(np.size(self.feature_mean)),
            **{k: v for k, v in self.ntk_map.describe().items() if k != "kind"}}


def standardised_features(extractor, params, mean, std, x: jax.Array) -> jax.Array:
  f = extractor.apply({"params": params}, x, features="pooled")
  f = (f - mean) / std
  return jnp.where(jnp.isfinite(f), f, 0.0)


@functools.partial(jax.jit, static_argnums=0)
def _extract_chunk(extractor, params, mean, std, images):
  with jax.default_matmul_precision("float32"):
    return standardised_features(extractor, params, mean, std,
                                 images.astype(jnp.float32) / 255.0)
