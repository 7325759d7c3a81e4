"""Run configuration: one frozen dataclass, saved as config.json in every run.

The CLI defaults and the experiment configs in `experiments/` are instances of
this class, so there is one source of truth for defaults.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from vpntk_jax.errors import ConfigError
from vpntk_jax.features import rff
from vpntk_jax.models.prompt import PromptConfig
from vpntk_jax.privacy import accounting
from vpntk_jax.training import LOSSES, TrainConfig

METHODS = ("dp-ntk", "dp-merf", "dp-mepf", "vp-ntk")
# Methods that need public models (`vpntk pretrain`).
PUBLIC_METHODS = ("dp-mepf", "vp-ntk")
# Each method's training objective when `loss` is None.
DEFAULT_LOSS = {"dp-ntk": "mmd", "dp-merf": "mmd", "dp-mepf": "mmd", "vp-ntk": "mmd+cosine"}
VP_FEATURES = ("extractor", "pixels")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a `vpntk synthesize` run depends on."""
  method: str = "dp-ntk"
  # Private data (its "train" split) and the real test set used for evaluation.
  data: str = "fashion_mnist"
  data_dir: str | None = None
  download: bool = False
  label_attribute: str | None = None
  # Resize private and test images to image_size x image_size (None: as stored).
  image_size: int | None = None
  # Privacy.
  epsilon: float = 1.0
  delta: float = 1e-5
  accountant: str = "pld"
  adjacency: str = "replace_one"
  # None: privacy noise from OS entropy. An int makes the noise reproducible
  # (experiments only); it is recorded as such in privacy.json.
  noise_seed: int | None = None
  # Optional second, noisier release of the same embedding (noise std
  # validation_noise_scale x the main one; the budget covers both) used only to
  # pick the training checkpoint whose synthetic embedding is closest to it
  # (DP-MEPF's model selection; 10 there). None: no validation release.
  validation_noise_scale: float | None = None
  # Public seed: NTK network, generator init, latent batches, synthesis.
  seed: int = 0
  # Features.
  ntk_layers: tuple = (800, "relu", "layernorm", 10)
  ntk_init: str = "torch"
  # DP-MERF: number of random Fourier features and kernel length scale.
  rff_features: int = 10000
  rff_bandwidth: float = rff.DEFAULT_BANDWIDTH
  # DP-MEPF: weight w of the second moment in the stacked release [u, w u^2].
  mepf_second_moment_weight: float = 1.0
  # VP-NTK: the public models (`vpntk pretrain` output directory), NTK
  # features on the public extractor's activations or on pixels, and prompts.
  public_model: str | None = None
  vp_features: str = "extractor"
  # Refuse to run if a public training image also occurs in the private data.
  check_public_overlap: bool = False
  prompt: PromptConfig = PromptConfig()
  # Objective: None -> the method's default (DEFAULT_LOSS); cosine_weight is
  # VP-NTK's alpha in ||mu_p - mu_s||^2 + alpha * (1 - cos(mu_p, mu_s)).
  loss: str | None = None
  cosine_weight: float = 1.0
  # Data-parallel devices (None: all, of every host in a multi-host job).
  # Changes only float rounding.
  devices: int | None = None
  # Generator training (post-processing of the release).
  train: TrainConfig = TrainConfig()
  # Synthesis and evaluation.
  num_synthetic: int = 60000
  classifiers: tuple = ("logistic_regression", "mlp", "cnn")
  eval_train_size: int = 6000
  cnn_epochs: int = 10

  def validate(self) -> "RunConfig":
    if self.method not in METHODS:
      raise ConfigError(f"unknown method {self.method!r}; available: {', '.join(METHODS)}")
    accounting.check_epsilon_delta(self.epsilon, self.delta)
    accounting.check_accountant(self.accountant)
    accounting.check_adjacency(self.adjacency)
    if self.num_synthetic <= 0 or self.eval_train_size <= 0:
      raise ConfigError("num_synthetic and eval_train_size must be positive")
    if not (isinstance(self.seed, int) and self.seed >= 0):
      raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
    if self.image_size is not None and not (isinstance(self.image_size, int)
                                            and self.image_size >= 4):
      raise ConfigError(f"image_size must be an integer >= 4, got {self.image_size!r}")
    if self.loss is not None and self.loss not in LOSSES:
      raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
    if not self.cosine_weight >= 0:
      raise ConfigError(f"cosine_weight must be >= 0, got {self.cosine_weight}")
    if self.method in PUBLIC_METHODS and not self.public_model:
      raise ConfigError(f"{self.method} needs public models: --public-model DIR (made by "
                        f"`vpntk pretrain`)")
    if self.validation_noise_scale is not None:
      if not (isinstance(self.validation_noise_scale, (int, float))
              and math.isfinite(self.validation_noise_scale)
              and self.validation_noise_scale > 0):
        raise ConfigError(f"validation_noise_scale must be a finite number > 0, got "
                          f"{self.validation_noise_scale!r}")
      if self.accountant == "analytic":
        raise ConfigError("a validation release makes two releases; the analytic accountant "
                          "covers one: use --accountant pld or rdp")
    if not self.mepf_second_moment_weight >= 0:
      raise ConfigError("mepf_second_moment_weight must be >= 0")
    if self.method == "vp-ntk":
      if self.vp_features not in VP_FEATURES:
        raise ConfigError(f"vp_features must be one of {VP_FEATURES}, got {self.vp_features!r}")
      self.prompt.validate()
    return self

  def resolved_loss(self) -> str:
    return self.loss or DEFAULT_LOSS[self.method]

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["ntk_layers"] = list(self.ntk_layers)
    d["classifiers"] = list(self.classifiers)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "RunConfig":
    d = dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}")
    try:
      for name, nested in _NESTED.items():
        d[name] = nested(**d.get(name, {}))
    except TypeError as e:
      raise ConfigError(f"bad nested config: {e}") from None
    d["ntk_layers"] = tuple(d.get("ntk_layers", cls.ntk_layers))
    d["classifiers"] = tuple(d.get("classifiers", cls.classifiers))
    return cls(**d)


_NESTED = {"train": TrainConfig, "prompt": PromptConfig}


# Fields a resumed run may change: they do not touch the release.
RESUMABLE_CHANGES = frozenset({"train.steps", "classifiers", "eval_train_size", "cnn_epochs",
                               "num_synthetic", "devices"})


# Fields that only shape what is done with a release (post-processing). Runs
# that agree on every other field have the same release, so one may reuse the
# other's (`--reuse-release`): ablations over these cost no extra privacy.
POST_PROCESSING_FIELDS = frozenset({"loss", "cosine_weight", "classifiers", "eval_train_size",
                                    "cnn_epochs", "num_synthetic", "devices",
                                    "check_public_overlap"})
POST_PROCESSING_PREFIXES = ("train.", "prompt.")


def release_reads_public_model(config: RunConfig) -> bool:
  """Whether the public models enter the released statistic (its feature map)."""
  return config.method == "dp-mepf" or (config.method == "vp-ntk"
                                        and config.vp_features == "extractor")


def release_differences(a: RunConfig, b: RunConfig) -> list[str]:
  """Fields that differ between a and b and change the private release."""
  # Where the release is taken on pixels, the public generator is only what
  # the prompts train on, so a better public model may reuse the release.
  public_is_post_processing = not (release_reads_public_model(a)
                                   or release_reads_public_model(b))
  return [k for k in diff(a, b) if k not in POST_PROCESSING_FIELDS
          and not k.startswith(POST_PROCESSING_PREFIXES)
          and not (k == "public_model" and public_is_post_processing)]


def diff(a: RunConfig, b: RunConfig) -> list[str]:
  """Dotted names of the fields that differ between two configs."""
  def flat(d: dict, prefix=""):
    for k, v in d.items():
      if isinstance(v, dict):
        yield from flat(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v
  fa, fb = dict(flat(a.to_json())), dict(flat(b.to_json()))
  return sorted(k for k in fa.keys() | fb.keys() if not _same(fa.get(k), fb.get(k)))


def _same(x: Any, y: Any) -> bool:
  if isinstance(x, float) and isinstance(y, float):
    return math.isclose(x, y, rel_tol=1e-12)
  return json.dumps(x) == json.dumps(y)


def with_overrides(config: RunConfig, overrides: dict) -> RunConfig:
  """Applies {"epsilon": 1, "train.steps": 10, ...}; None values are skipped.

  Strings are parsed by the field's type (command-line `--config.x=y`);
  other values are used as given.
  """
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  return config_files.apply_overrides(
      config, {k: v for k, v in overrides.items() if v is not None})
