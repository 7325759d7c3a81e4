"""DP-MERF with the Laplace kernel: random Fourier features with Cauchy frequencies,
their labelled mean released once, a conditional generator trained to match it.

The worked example of docs/adding_a_method.md. Privacy: the recipe is DP-MERF's
(`mean_embedding.with_new_generator`), so the release, its noise and its ledger
record are made in `vpntk_jax.privacy`, as for every method; this module only
chooses the features. The release's sensitivity holds for any input because
every feature has norm 1 whatever the frequencies and the image are
(cos^2 + sin^2 = 1 per frequency; `features.rff` divides by the float norm with
a safety margin), and the frequencies are drawn from the public seed, never
from data.
"""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.methods import dp_merf
from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting

# About the median L1 distance between two FashionMNIST images on [0, 1] pixels
# (220; MNIST's is 130), as DP-MERF's sqrt(127) is about the median L2 distance.
DEFAULT_BANDWIDTH = 200.0


@dataclasses.dataclass(frozen=True)
class Options:
  """Laplace-kernel random Fourier features, W ~ Cauchy(0, 1/bandwidth)."""
  num_features: int = setting(10000, "random Fourier features D", flag="--rff-features")
  bandwidth: float = setting(DEFAULT_BANDWIDTH, "kernel length scale, in L1 distance",
                             flag="--rff-bandwidth")

  def validate(self) -> "Options":
    # The same features as DP-MERF's, so the same limits (its errors name dp-merf).
    dp_merf.Options(num_features=self.num_features, bandwidth=self.bandwidth).validate()
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  # JAX enters here, when a run starts: the module stays importable for --help.
  from vpntk_jax.features.laplace_rff import LaplaceRFFFeatureMap  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  features = LaplaceRFFFeatureMap(input_dim=math.prod(image_shape),
                                  num_features=config.options.num_features,
                                  bandwidth=config.options.bandwidth, seed=config.seed)
  return mean_embedding.with_new_generator(features, config, image_shape, num_classes)


METHOD = Method(
    name="dp-merf-laplace",
    summary="random Fourier features of a Laplace kernel, one release, a new conditional "
            "generator",
    options=Options, build=build)
