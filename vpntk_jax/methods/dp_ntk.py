"""DP-NTK: the labelled mean of unit-norm NTK features of a fixed random network,
released once, and a conditional generator trained to match it."""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Options:
  """DP-NTK has no settings of its own: the NTK network is RunConfig.ntk_layers."""

  def validate(self) -> "Options":
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.features.ntk_map import NTKFeatureMap  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  features = NTKFeatureMap(mean_embedding.ntk_network(config), input_dim=math.prod(image_shape),
                           seed=config.seed)
  return mean_embedding.with_new_generator(features, config, image_shape, num_classes)


METHOD = Method(name="dp-ntk", summary="NTK features of a random network, one release, a "
                "new conditional generator", options=Options, build=build,
                dpimagebench_name="DP-NTK")
