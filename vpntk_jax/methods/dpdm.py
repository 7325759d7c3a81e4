"""DPDM: the diffusion model trained on the private set with DP-SGD, from scratch or
from a pretraining on a public pool; PrivImage without the query. With
--dp-sgd-steps 0 and a conditional pretraining it is the public-only baseline."""

from __future__ import annotations

import dataclasses

from vpntk_jax.blocks import (DiffusionModelConfig, DpSgdConfig, PublicPretrainConfig,
                              start_model_name)
from vpntk_jax.methods import _diffusion_family
from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class Options:
  """The optional public pool and the diffusion model's training."""
  public_data: str | None = _diffusion_family.public_data_setting(none="none, no pretraining")
  # The pool's (or the start model's first) labels must then be the private classes
  # (e.g. a public part of the same dataset); False: every label the null class.
  pretrain_conditional: bool = setting(False, "pretrain with the public pool's labels, "
                                       "and start class c from the start model's class c",
                                       flag="--pretrain-conditional")
  start_model: str | None = _diffusion_family.start_model_setting()
  model: DiffusionModelConfig = DiffusionModelConfig()
  pretrain: PublicPretrainConfig = PublicPretrainConfig()
  dp_sgd: DpSgdConfig = DpSgdConfig()

  def validate(self) -> "Options":
    for block in (self.model, self.pretrain, self.dp_sgd):
      block.validate()
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.stages import diffusion_recipe  # pylint: disable=g-import-not-at-top
  return diffusion_recipe.build(
      config, image_shape, num_classes, lambda: diffusion_recipe.pool_start(
          config.options.public_data, image_shape, num_classes,
          conditional=config.options.pretrain_conditional,
          start_model=start_model_name(config.options.start_model) is not None))


METHOD = Method(
    name="dpdm", summary="a diffusion model trained with DP-SGD (from scratch, or from a "
    "public pretraining)", options=Options, build=build, dpimagebench_name="DPDM",
    trains_generator=False,
    # Pretraining needs the public pool.
    training_logs=lambda options: _diffusion_family.training_logs(
        options, pretrains=bool(options.public_data)),
    post_processing=frozenset({"model.sample_steps", "model.guidance_scale",
                               "model.sample_batch"}))
