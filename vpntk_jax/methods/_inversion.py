"""Settings shared by the token methods (DPAgg-TI, DP-SGD-TI): the public diffusion
model they condition and how its tokens are sampled.
JAX-free; `stages.textual_inversion` builds the recipes."""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.blocks import check_integer
from vpntk_jax.errors import ConfigError
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Heun sampling from the tokens, with classifier-free guidance against the public
  null token (weight guidance_scale; 0: none)."""
  sample_steps: int = 18
  guidance_scale: float = setting(2.0, "classifier-free guidance weight of the tokens",
                                  flag="--guidance-scale")
  sample_batch: int = 500

  def validate(self) -> "SamplingConfig":
    check_integer(self.sample_steps, "sampling.sample_steps")
    check_integer(self.sample_batch, "sampling.sample_batch")
    if isinstance(self.guidance_scale, bool) or not isinstance(
        self.guidance_scale, (int, float)) or not (math.isfinite(self.guidance_scale)
                                                   and self.guidance_scale >= 0):
      raise ConfigError(f"sampling.guidance_scale must be a finite number >= 0, got "
                        f"{self.guidance_scale!r}")
    return self


def require_diffusion_model(options, method: str) -> None:
  if not options.diffusion_model:
    raise ConfigError(f"{method} needs a public diffusion model: --diffusion-model DIR (made "
                      f"by `vpntk pretrain-diffusion` on public images)")


# Changing how the tokens are sampled reuses the release.
SAMPLING_FIELDS = frozenset({"sampling."})


def diffusion_model_setting():
  from vpntk_jax.methods._diffusion_family import SHIPPED_START  # pylint: disable=g-import-not-at-top
  return setting(SHIPPED_START, "the frozen public diffusion model: a directory from "
                 "`vpntk pretrain-diffusion`, or shipped:NAME (the package's)",
                 flag="--diffusion-model", metavar="MODEL")
