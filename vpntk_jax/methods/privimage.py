"""PrivImage: a semantic query picks the public classes that resemble the private
ones; a diffusion model pretrained on them is fine-tuned on the private set
with DP-SGD."""

from __future__ import annotations

import dataclasses

from vpntk_jax.blocks import (DiffusionModelConfig, DpSgdConfig, PublicPretrainConfig,
                              check_integer, check_positive)
from vpntk_jax.errors import ConfigError
from vpntk_jax.methods import _diffusion_family
from vpntk_jax.methods import base
from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class QueryConfig:
  """Top-k votes of the public classifier per private image, released once with
  noise std noise_multiplier x sensitivity (sqrt(k), or sqrt(2k) replace-one);
  then `per_class` public classes chosen per private class."""
  top_k: int = setting(2, "the query's votes per private image", flag="--top-k")
  noise_multiplier: float = setting(50.0, "the query's noise multiplier", flag="--query-noise")
  per_class: int = 1

  def validate(self) -> "QueryConfig":
    for name in ("top_k", "per_class"):
      check_integer(getattr(self, name), f"query.{name}")
    check_positive(self.noise_multiplier, "query.noise_multiplier")
    return self


@dataclasses.dataclass(frozen=True)
class Options:
  """The public classifier and pool, the query, and the diffusion model's training."""
  # `vpntk pretrain --extractor-only` on the pool: its classifier scores the private images.
  public_model: str | None = base.public_model_setting()
  check_public_overlap: bool = base.check_public_overlap_setting()
  public_data: str | None = _diffusion_family.public_data_setting(
      none="the data --public-model's classifier was trained on")
  query: QueryConfig = QueryConfig()
  start_model: str | None = _diffusion_family.start_model_setting()
  model: DiffusionModelConfig = DiffusionModelConfig()
  # The start model has learned the pool already; steps > 0 add the paper's
  # pretraining on the selected classes.
  pretrain: PublicPretrainConfig = PublicPretrainConfig(steps=0)
  dp_sgd: DpSgdConfig = DpSgdConfig()

  def validate(self) -> "Options":
    if not self.public_model:
      raise ConfigError("privimage needs a public classifier: --public-model DIR (made by "
                        "`vpntk pretrain --extractor-only` on the public pool)")
    for block in (self.query, self.model, self.pretrain, self.dp_sgd):
      block.validate()
    return self


def pool_source(options: Options, public_models) -> str:
  if options.public_data:
    return options.public_data
  trained_on = public_models.spec.get("pretrain_config", {}).get("data", {}).get("source")
  if not trained_on:
    raise ConfigError(f"{options.public_model}/public.json does not name the data its "
                      f"classifier was trained on; give the pool with --public-data")
  return trained_on


def build(config, image_shape, num_classes, public_models):
  from vpntk_jax.stages import diffusion_recipe  # pylint: disable=g-import-not-at-top
  return diffusion_recipe.build(
      config, image_shape, num_classes, lambda: diffusion_recipe.query_start(
          pool_source(config.options, public_models), image_shape, num_classes,
          config.options.query, public_models, method=config.method))


METHOD = Method(
    name="privimage", summary="semantic query -> public diffusion pretraining on the selected "
    "classes -> DP-SGD fine-tuning", options=Options, build=build,
    dpimagebench_name="PrivImage",
    needs_public_models=True, trains_generator=False,
    # The query's selection from the pool is always there to pretrain on.
    training_logs=lambda options: _diffusion_family.training_logs(options, pretrains=True),
    # Only what is done with the released histogram: the selection and pretraining
    # count as post-processing, but the DP-SGD steps are a mechanism, so their
    # settings are not.
    post_processing=frozenset({"check_public_overlap", "model.sample_steps",
                               "model.guidance_scale", "model.sample_batch"}))
