"""DP-SGD-TI, DPAgg-TI's baseline: one token per class for the frozen public diffusion
model, trained with DP-SGD on the private images at the same budget."""

from __future__ import annotations

import dataclasses

from vpntk_jax.blocks import DpSgdConfig
from vpntk_jax.methods import _diffusion_family, _inversion
from vpntk_jax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Options:
  """The public diffusion model, DP-SGD on the tokens, sampling."""
  diffusion_model: str | None = _inversion.diffusion_model_setting()
  # Tokens are O(1) and their gradients small: a larger step and clip than the UNet's.
  dp_sgd: DpSgdConfig = DpSgdConfig(
      steps=100, batch_size=64, clip_norm=0.01, learning_rate=0.05)
  sampling: _inversion.SamplingConfig = _inversion.SamplingConfig()

  def validate(self) -> "Options":
    _inversion.require_diffusion_model(self, "dpsgd-ti")
    self.dp_sgd.validate()
    self.sampling.validate()
    return self


def build(config, image_shape, num_classes, public_models):
  del public_models
  from vpntk_jax.stages import textual_inversion  # pylint: disable=g-import-not-at-top
  return textual_inversion.build_dp_sgd(config, image_shape, num_classes)


METHOD = Method(
    name="dpsgd-ti", summary="class tokens of a public diffusion model trained with DP-SGD "
    "(DPAgg-TI's baseline)", options=Options, build=build,
    post_processing=_inversion.SAMPLING_FIELDS, trains_generator=False,
    # The public diffusion model is given, not pretrained here: DP-SGD's log only.
    training_logs=lambda options: _diffusion_family.training_logs(options, pretrains=False))
