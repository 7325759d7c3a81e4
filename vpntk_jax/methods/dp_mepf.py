"""DP-MEPF: first and second moments of a public network's perceptual features,
released once, and a conditional generator trained to match them."""

from __future__ import annotations

import dataclasses

from vpntk_jax.errors import ConfigError
from vpntk_jax.methods import base
from vpntk_jax.methods.base import PUBLIC_MODEL_LEGACY_FIELDS, Method
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class Options:
  """The public feature extractor, and the weight w of the second moment in [u, w u^2]."""
  public_model: str | None = base.public_model_setting()
  check_public_overlap: bool = base.check_public_overlap_setting()
  second_moment_weight: float = setting(1.0, "weight of the second moment in the release",
                                        flag="--mepf-second-moment-weight", metavar="W")

  def validate(self) -> "Options":
    if not self.public_model:
      raise ConfigError("dp-mepf needs public models: --public-model DIR (made by "
                        "`vpntk pretrain`)")
    if not self.second_moment_weight >= 0:
      raise ConfigError("dp-mepf second_moment_weight must be >= 0")
    return self


def build(config, image_shape, num_classes, public_models):
  from vpntk_jax.features.perceptual import PerceptualFeatureMap  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  features = PerceptualFeatureMap(public_models.extractor, public_models.extractor_params,
                                  tuple(image_shape), config.options.second_moment_weight)
  return mean_embedding.with_new_generator(features, config, image_shape, num_classes)


METHOD = Method(
    name="dp-mepf", summary="perceptual features of a public extractor (first and second "
    "moments), one release, a new conditional generator",
    options=Options, build=build,
    legacy_fields={**PUBLIC_MODEL_LEGACY_FIELDS,
                   "mepf_second_moment_weight": "second_moment_weight"},
    needs_public_models=True,
    release_reads_public_model=lambda options: True,
    post_processing=frozenset({"check_public_overlap"}))
