"""DPDM: the diffusion model trained on the private set with DP-SGD, from scratch or
from an unconditional pretraining on a public pool; PrivImage without the query."""

from __future__ import annotations

import dataclasses

from vpntk_jax.methods import _diffusion
from vpntk_jax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Options:
  """The optional public pool (pretraining with every label the null class) and the
  diffusion model's training."""
  public_data: str | None = None
  model: _diffusion.DiffusionModelConfig = _diffusion.DiffusionModelConfig()
  pretrain: _diffusion.PublicPretrainConfig = _diffusion.PublicPretrainConfig()
  dp_sgd: _diffusion.DpSgdConfig = _diffusion.DpSgdConfig()

  def validate(self) -> "Options":
    for block in (self.model, self.pretrain, self.dp_sgd):
      block.validate()
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.stages import diffusion  # pylint: disable=g-import-not-at-top
  return diffusion.build(config, image_shape, num_classes,
                         pool_source=config.options.public_data)


METHOD = Method(
    name="dpdm", summary="a diffusion model trained with DP-SGD (from scratch, or from a "
    "public pretraining)", options=Options, build=build,
    post_processing=frozenset({"model.sample_steps", "model.guidance_scale",
                               "model.sample_batch"}),
    flags=_diffusion.FLAGS)
