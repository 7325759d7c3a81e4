"""The diffusion family's settings (PrivImage, DPDM): the model, its public
pretraining and its DP-SGD fine-tuning (the flagged fields are the methods' flags). JAX-free;
`stages.diffusion` builds the recipe from them."""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.errors import ConfigError
from vpntk_jax.run_files import DP_SGD_LOG, TRAIN_LOG
from vpntk_jax.settings import setting

UNET_SIZES = ("tiny", "cpu", "small", "reference")  # models.unet.UNET_SIZES, without importing JAX


def check_integer(value, name: str, *, minimum: int = 1, allow_none: bool = False) -> None:
  # Plain ints only: a config holds what JSON can store.
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")


def _fraction(value, name: str) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
    raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True)
class DiffusionModelConfig:
  """The class-conditional EDM UNet and how synthesis samples it."""
  size: str = setting("small", "UNet size: tiny (tests), cpu (CPU-scale runs), small, "
                      "reference (PrivImage's 1.5M)", flag="--unet-size", choices=UNET_SIZES)
  # P(label -> null class) in training, so classifier-free guidance can run.
  label_dropout: float = 0.1
  sample_steps: int = setting(18, "Heun steps per synthesis", flag="--synthesis-steps",
                              aliases=("--sample-steps",))
  guidance_scale: float = 0.0
  # Images per synthesis batch (one Heun solve of this many images).
  sample_batch: int = 500

  def validate(self) -> "DiffusionModelConfig":
    if self.size not in UNET_SIZES:
      raise ConfigError(f"model.size must be one of {UNET_SIZES}, got {self.size!r}")
    _fraction(self.label_dropout, "model.label_dropout")
    check_integer(self.sample_steps, "model.sample_steps")
    check_integer(self.sample_batch, "model.sample_batch")
    if not (isinstance(self.guidance_scale, (int, float)) and self.guidance_scale >= 0):
      raise ConfigError(f"model.guidance_scale must be >= 0, got {self.guidance_scale!r}")
    if self.guidance_scale > 0 and self.label_dropout == 0:
      raise ConfigError("model.guidance_scale > 0 needs model.label_dropout > 0 (the null "
                        "class is never trained otherwise)")
    return self


@dataclasses.dataclass(frozen=True)
class PublicPretrainConfig:
  """Non-private training on public images (no privacy cost)."""
  steps: int = setting(1000, "public pretraining steps (0: none)", flag="--pretrain-steps")
  batch_size: int = 256
  learning_rate: float = 3e-4
  multiplicity: int = 1
  ema_decay: float = 0.999
  checkpoint_every: int = 250

  def validate(self) -> "PublicPretrainConfig":
    check_integer(self.steps, "pretrain.steps", minimum=0)
    for name in ("batch_size", "multiplicity", "checkpoint_every"):
      check_integer(getattr(self, name), f"pretrain.{name}")
    check_positive(self.learning_rate, "pretrain.learning_rate")
    _fraction(self.ema_decay, "pretrain.ema_decay")
    return self


@dataclasses.dataclass(frozen=True)
class DpSgdConfig:
  """DP-SGD on the private set: Poisson batches of expected size `batch_size`
  (sampling rate batch_size / N), per-example clipping to `clip_norm`, the
  loss averaged over `multiplicity` noise draws inside the clip, Adam, EMA.
  steps 0: no private training (a public-only baseline: nothing is charged but
  the one-shot releases, if any)."""
  steps: int = setting(200, "DP-SGD steps T", flag="--dp-sgd-steps", aliases=("--dp-steps",))
  batch_size: int = setting(256, "expected Poisson batch size (sampling rate = it / N)",
                            flag="--dp-batch-size")
  clip_norm: float = setting(1e-3, "per-example clip norm C", flag="--clip-norm")
  multiplicity: int = setting(4, "diffusion noise draws per example, averaged inside the "
                              "clip", flag="--noise-multiplicity")
  learning_rate: float = 3e-4
  ema_decay: float = 0.999
  # Truncated Poisson: a draw above max_batch is cut to a random max_batch
  # (accounted as such, PLD only). None: never cut.
  max_batch: int | None = None
  # Rows per per-example-gradient pass (memory); None: the whole padded batch.
  microbatch: int | None = None
  checkpoint_every: int = 50

  def validate(self) -> "DpSgdConfig":
    check_integer(self.steps, "dp_sgd.steps", minimum=0)
    for name in ("batch_size", "multiplicity", "checkpoint_every"):
      check_integer(getattr(self, name), f"dp_sgd.{name}")
    check_integer(self.max_batch, "dp_sgd.max_batch", allow_none=True)
    check_integer(self.microbatch, "dp_sgd.microbatch", allow_none=True)
    check_positive(self.clip_norm, "dp_sgd.clip_norm")
    check_positive(self.learning_rate, "dp_sgd.learning_rate")
    _fraction(self.ema_decay, "dp_sgd.ema_decay")
    if self.max_batch is not None and self.max_batch < self.batch_size:
      raise ConfigError(f"dp_sgd.max_batch ({self.max_batch}) is below the expected batch "
                        f"size ({self.batch_size}): most batches would be cut")
    return self


def training_logs(options, *, pretrains: bool) -> frozenset:
  """The logs of a diffusion-family run: train_log.csv of the public pretraining
  (where it has public images, `pretrains`, and steps) and dp_sgd_log.csv of
  DP-SGD (where it has steps)."""
  logs = set()
  if pretrains and options.pretrain.steps:
    logs.add(TRAIN_LOG)
  if options.dp_sgd.steps:
    logs.add(DP_SGD_LOG)
  return frozenset(logs)


def public_data_setting(none: str):
  return setting(None, "the public image pool (any data source; its train split)",
                 flag="--public-data", metavar="SOURCE", none=none)
