"""DP-MERF: the labelled mean of random Fourier features, released once, and a
conditional generator trained to match it."""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.errors import ConfigError
from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting

# Kernel length scale: sqrt(127), the reference's FashionMNIST setting.
DEFAULT_BANDWIDTH = math.sqrt(127.0)


@dataclasses.dataclass(frozen=True)
class Options:
  """Random Fourier features [cos(Wx), sin(Wx)] / sqrt(D/2), W ~ N(0, 1/bandwidth^2)."""
  num_features: int = setting(10000, "random Fourier features D", flag="--rff-features")
  bandwidth: float = setting(DEFAULT_BANDWIDTH, "kernel length scale", flag="--rff-bandwidth")

  def validate(self) -> "Options":
    if not (isinstance(self.num_features, int) and self.num_features >= 2
            and self.num_features % 2 == 0):
      raise ConfigError(f"dp-merf num_features must be an even integer >= 2, got "
                        f"{self.num_features!r}")
    if not (isinstance(self.bandwidth, (int, float)) and math.isfinite(self.bandwidth)
            and self.bandwidth > 0):
      raise ConfigError(f"dp-merf bandwidth must be a finite number > 0, got {self.bandwidth!r}")
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.features.rff import RFFFeatureMap  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  features = RFFFeatureMap(input_dim=math.prod(image_shape), num_features=config.options.num_features,
                           bandwidth=config.options.bandwidth, seed=config.seed)
  return mean_embedding.with_new_generator(features, config, image_shape, num_classes)


METHOD = Method(
    name="dp-merf", summary="random Fourier features, one release, a new conditional generator",
    options=Options, build=build, dpimagebench_name="DP-MERF",
    legacy_fields={"rff_features": "num_features", "rff_bandwidth": "bandwidth"})
