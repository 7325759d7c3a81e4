"""DPAgg-TI: one textual-inversion token per private image on a frozen public
diffusion model, each scaled to norm <= 1, their (per-class) sum released once
with Gaussian noise; the noisy centroids condition generation."""

from __future__ import annotations

import dataclasses

from vpntk_jax.blocks import check_integer, check_positive
from vpntk_jax.errors import ConfigError
from vpntk_jax.methods import _inversion
from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class InversionConfig:
  """Per-image textual inversion: Adam on the token alone, the EDM loss of that image
  averaged over `multiplicity` noise draws per step; `chunk_size` images at a time."""
  steps: int = setting(100, "Adam steps per image", flag="--inversion-steps",
                       aliases=("--ti-steps",))
  learning_rate: float = 0.05
  multiplicity: int = 4
  chunk_size: int = 64

  def validate(self) -> "InversionConfig":
    for name in ("steps", "multiplicity", "chunk_size"):
      check_integer(getattr(self, name), f"inversion.{name}")
    check_positive(self.learning_rate, "inversion.learning_rate")
    return self


@dataclasses.dataclass(frozen=True)
class Options:
  """The public diffusion model, the inversion, the aggregate's sampling rate, sampling."""
  diffusion_model: str | None = _inversion.diffusion_model_setting()
  inversion: InversionConfig = InversionConfig()
  # 1: all of them.
  sampling_rate: float = setting(1.0, "Poisson rate of the images inverted and summed",
                                 flag="--ti-sampling-rate", metavar="RATE")
  # Row i = image i.
  ti_embeddings: str | None = setting(None, "per-image tokens computed elsewhere (.npy, or "
                                      ".npz 'embeddings')", flag="--ti-embeddings",
                                      metavar="FILE")
  sampling: _inversion.SamplingConfig = _inversion.SamplingConfig()

  def validate(self) -> "Options":
    _inversion.require_diffusion_model(self, "dpagg-ti")
    self.inversion.validate()
    self.sampling.validate()
    rate = self.sampling_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
      raise ConfigError(f"sampling_rate must be in (0, 1], got {rate!r}")
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.stages import textual_inversion  # pylint: disable=g-import-not-at-top
  return textual_inversion.build_aggregate(config, image_shape, num_classes)


METHOD = Method(
    name="dpagg-ti", summary="per-image textual inversion on a public diffusion model -> "
    "noisy aggregate of the unit tokens -> guided sampling", options=Options, build=build,
    post_processing=_inversion.SAMPLING_FIELDS,
    # The noisy centroids condition the public model as they are: nothing is trained
    # on the release, so no training log and no generator settings.
    trains_generator=False, training_logs=lambda options: frozenset())
