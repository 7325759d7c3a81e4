"""Random Fourier features (DP-MERF): phi(x) = [cos(Wx), sin(Wx)] / sqrt(D/2).

<phi(x), phi(x')> approximates the Gaussian kernel exp(-||x - x'||^2 / (2 s^2))
for W ~ N(0, 1/s^2). Every phi(x) has norm exactly 1 in exact arithmetic; the
shared `normalising_scale` divides by the float norm with the NTK path's
safety margin, so the release's sensitivity rests on the same guarantee.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax.features import labelled, ntk
from vpntk_jax.features.public_params import public_constant

# DP-MERF's FashionMNIST setting, read as a kernel length scale on [0, 1]
# pixels: sqrt(127) ~ 11.3, close to the typical distance between images.
DEFAULT_BANDWIDTH = float(np.sqrt(127.0))


def median_heuristic_bandwidth(public_images: np.ndarray, num_pairs: int = 2000,
                               seed: int = 0) -> float:
  """Median pairwise distance of PUBLIC images (never call this on private data)."""
  x = np.asarray(ntk.flatten_images(public_images))
  rng = np.random.default_rng(seed)
  i, j = rng.integers(0, len(x), num_pairs), rng.integers(0, len(x), num_pairs)
  d = np.linalg.norm(x[i] - x[j], axis=1)
  return float(np.median(d[d > 0]))


def rff_features(frequencies: jax.Array, x: jax.Array) -> jax.Array:
  """(N, d) -> (N, D) unit-norm (up to the safety margin) random Fourier features."""
  wx = x @ frequencies
  phi = jnp.concatenate([jnp.cos(wx), jnp.sin(wx)], axis=-1)
  return phi * ntk.normalising_scale(jnp.sum(jnp.square(phi), -1))[:, None]


def _rff_of_images(frequencies: jax.Array, images: jax.Array) -> jax.Array:
  return rff_features(frequencies, ntk.flatten_images(images))


def draw_frequencies(input_dim: int, num_features: int, bandwidth: float,
                     seed: int) -> jax.Array:
  """(input_dim, num_features / 2) frequencies W ~ N(0, 1 / bandwidth^2) from `seed`."""
  return jax.random.normal(jax.random.key(seed), (input_dim, num_features // 2)) / bandwidth


_frequencies = public_constant(draw_frequencies)


@dataclasses.dataclass(frozen=True)
class RFFFeatureMap:
  """DP-MERF's feature map. Frequencies are public: drawn from `seed`."""
  input_dim: int
  num_features: int = 10000
  bandwidth: float = DEFAULT_BANDWIDTH
  seed: int = 0
  chunk_size: int = 4096
  norm_bound: float = 1.0

  def __post_init__(self):
    if self.num_features < 2 or self.num_features % 2:
      raise ValueError(f"num_features must be even and >= 2, got {self.num_features}")
    if not self.bandwidth > 0:
      raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")

  @property
  def frequencies(self) -> jax.Array:
    return _frequencies(self.input_dim, self.num_features, self.bandwidth, self.seed)

  def private_sum(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                  progress: Callable[[int], None] | None = None, mesh=None) -> dict:
    total = labelled.labelled_feature_sum(_rff_of_images, self.frequencies, images, labels,
                                          num_classes, chunk_size=self.chunk_size,
                                          progress=progress, mesh=mesh)
    return {"rff": jnp.asarray(total, jnp.float32)}

  def synthetic_mean(self, x_grouped: jax.Array) -> dict:
    num_classes, _, dim = x_grouped.shape
    phi = rff_features(self.frequencies, x_grouped.reshape(-1, dim))
    return {"rff": labelled.labelled_feature_mean(phi, num_classes)}

  def template(self, num_classes: int) -> dict:
    return {"rff": np.zeros((self.num_features, num_classes), np.float32)}

  def describe(self) -> dict:
    return {"kind": "rff", "num_features": self.num_features, "bandwidth": self.bandwidth,
            "input_dim": self.input_dim, "seed": self.seed}
