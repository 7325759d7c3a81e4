"""Random Fourier features of the Laplace kernel (the dp-merf-laplace method).

<phi(x), phi(x')> approximates exp(-||x - x'||_1 / s): the kernel's Fourier
transform is a product of Cauchy densities, so the frequencies are i.i.d.
Cauchy(0, 1/s) where DP-MERF's are Gaussian. phi(x) = [cos(Wx), sin(Wx)] /
sqrt(D/2) is otherwise DP-MERF's, with the same norm: cos^2 + sin^2 = 1 per
frequency, whatever W and x are, so every feature has norm 1 and the release's
sensitivity is the Gaussian map's.
"""

from __future__ import annotations

import dataclasses

import jax

from vpntk_jax.features.public_params import public_constant
from vpntk_jax.features.rff import RFFFeatureMap


def draw_cauchy_frequencies(input_dim: int, num_features: int, bandwidth: float,
                            seed: int) -> jax.Array:
  """(input_dim, num_features / 2) frequencies W ~ Cauchy(0, 1 / bandwidth) from `seed`."""
  return jax.random.cauchy(jax.random.key(seed), (input_dim, num_features // 2)) / bandwidth


# Its own cache: a run that also builds a Gaussian map keeps both sets of frequencies.
_frequencies = public_constant(draw_cauchy_frequencies)


@dataclasses.dataclass(frozen=True)
class LaplaceRFFFeatureMap(RFFFeatureMap):
  """DP-MERF's feature map with Cauchy frequencies; `bandwidth` is an L1 length scale.

  It has no default here: the inherited one is the Gaussian kernel's L2 scale,
  about 20 times too small for L1 distances between images.
  """
  bandwidth: float = dataclasses.field(kw_only=True)

  @property
  def frequencies(self) -> jax.Array:
    return _frequencies(self.input_dim, self.num_features, self.bandwidth, self.seed)

  def describe(self) -> dict:
    return {**super().describe(), "kind": "rff-laplace"}
