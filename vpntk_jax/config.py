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
from vpntk_jax.privacy import accounting
from vpntk_jax.training import TrainConfig

METHODS = ("dp-ntk", "dp-merf")


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a `vpntk synthesize` run depends on."""
  method: str = "dp-ntk"
  # Private data (its "train" split) and the real test set used for evaluation.
  data: str = "fashion_mnist"
  data_dir: str | None = None
  download: bool = False
  label_attribute: str | None = None
  # Privacy.
  epsilon: float = 1.0
  delta: float = 1e-5
  accountant: str = "pld"
  adjacency: str = "replace_one"
  # None: privacy noise from OS entropy. An int makes the noise reproducible
  # (experiments only); it is recorded as such in privacy.json.
  noise_seed: int | None = None
  # Public seed: NTK network, generator init, latent batches, synthesis.
  seed: int = 0
  # Features.
  ntk_layers: tuple = (800, "relu", "layernorm", 10)
  ntk_init: str = "torch"
  # DP-MERF: number of random Fourier features and kernel length scale.
  rff_features: int = 10000
  rff_bandwidth: float = rff.DEFAULT_BANDWIDTH
  # Data-parallel devices (None: all local devices). Changes only float rounding.
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
    return self

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["ntk_layers"] = list(self.ntk_layers)
    d["classifiers"] = list(self.classifiers)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "RunConfig":
    d = dict(d)
    d["train"] = TrainConfig(**d.get("train", {}))
    d["ntk_layers"] = tuple(d.get("ntk_layers", cls.ntk_layers))
    d["classifiers"] = tuple(d.get("classifiers", cls.classifiers))
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}")
    return cls(**d)


# Fields a resumed run may change: they do not touch the release.
RESUMABLE_CHANGES = frozenset({"train.steps", "classifiers", "eval_train_size", "cnn_epochs",
                               "num_synthetic", "devices"})


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
  """Applies {"epsilon": 1, "train.steps": 10, ...}; None values are skipped."""
  top, train = {}, {}
  for key, value in overrides.items():
    if value is None:
      continue
    if key.startswith("train."):
      train[key[len("train."):]] = value
    else:
      top[key] = value
  try:
    new_train = dataclasses.replace(config.train, **train)
    return dataclasses.replace(config, train=new_train, **top)
  except (TypeError, ValueError) as e:
    raise ConfigError(str(e)) from None
