"""VP-NTK: DP-NTK's one release, matched by training visual prompts (and, optionally,
fine-tuning) on a public pretrained conditional generator."""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.blocks import PromptConfig
from vpntk_jax.errors import ConfigError
from vpntk_jax.methods import base
from vpntk_jax.methods.base import PUBLIC_MODEL_LEGACY_FIELDS, Method
from vpntk_jax.settings import setting

FEATURES = ("extractor", "pixels")


@dataclasses.dataclass(frozen=True)
class Options:
  """The public models, where the NTK features are taken, and the prompts."""
  public_model: str | None = base.public_model_setting()
  check_public_overlap: bool = base.check_public_overlap_setting()
  features: str = setting("extractor", "NTK features on the public extractor's activations "
                          "or on pixels", flag="--vp-features", choices=FEATURES)
  prompt: PromptConfig = PromptConfig()

  def validate(self) -> "Options":
    if not self.public_model:
      raise ConfigError("vp-ntk needs public models: --public-model DIR (made by "
                        "`vpntk pretrain`)")
    if self.features not in FEATURES:
      raise ConfigError(f"vp-ntk features must be one of {FEATURES}, got {self.features!r}")
    self.prompt.validate()
    return self


def release_reads_public_model(options: Options) -> bool:
  return options.features == "extractor"


def build(config, image_shape, num_classes, public_models):
  from vpntk_jax import public  # pylint: disable=g-import-not-at-top
  from vpntk_jax.features.ntk_map import NTKFeatureMap  # pylint: disable=g-import-not-at-top
  from vpntk_jax.models.prompt import PromptedGenerator  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  public.require_generator(public_models)
  if config.train.latent_dim != public_models.latent_dim:
    raise ConfigError(f"train.latent_dim is {config.train.latent_dim}; the public generator "
                      f"takes {public_models.latent_dim}")
  network = mean_embedding.ntk_network(config)
  if release_reads_public_model(config.options):
    features = public_models.feature_map(network, config.seed)
  else:
    features = NTKFeatureMap(network, input_dim=math.prod(image_shape), seed=config.seed)
  sampler = PromptedGenerator(public_models.generator, public_models.generator_variables,
                              config.options.prompt, num_classes, tuple(image_shape))
  return mean_embedding.MeanEmbeddingRecipe(features, sampler)


METHOD = Method(
    name="vp-ntk", summary="DP-NTK's release matched by visual prompts on a public "
    "pretrained generator", options=Options, build=build,
    legacy_fields={**PUBLIC_MODEL_LEGACY_FIELDS, "vp_features": "features", "prompt": "prompt"},
    default_loss="mmd+cosine",
    needs_public_models=True, release_reads_public_model=release_reads_public_model,
    # Where the release is taken on pixels, the public generator is only what
    # the prompts train on: the public_model may then change too (see
    # config.release_differences).
    post_processing=frozenset({"check_public_overlap", "prompt."}))
