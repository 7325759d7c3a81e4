"""Run configuration: one frozen dataclass, saved as config.json in every run.

The CLI defaults and the experiment configs in `experiments/` are instances of
this class, so there is one source of truth for defaults. The method's own
settings are its block, `options` (the dataclass its module in `methods/`
declares); everything else here is shared by every method. Nothing here
imports JAX.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from vpntk_jax import blocks
from vpntk_jax import config_files
from vpntk_jax import methods
from vpntk_jax import protocols
from vpntk_jax.blocks import (CLASSIFIERS, DEFAULT_CLASSIFIERS, LOSSES, DataConfig, TrainConfig,
                              data_from_legacy)
from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import parameters
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Everything a `vpntk synthesize` run depends on."""
  method: str = setting("dp-ntk", "the method (its settings: --method NAME --help)",
                        flag="--method", choices=methods.names, metavar="NAME")
  # Private data (its "train" split) and the real test set used for evaluation.
  data: DataConfig = DataConfig()
  # A benchmark's fixed choices (`vpntk_jax.protocols`): which training images are
  # private, delta (a delta left at its default becomes the protocol's).
  protocol: str = setting(protocols.NONE, "dpimagebench: its 55,000/5,000 split, delta "
                          "1/(N ln N)",
                          flag="--protocol", stage="data", choices=protocols.PROTOCOLS)
  # Privacy.
  epsilon: float = setting(1.0, "privacy budget epsilon", flag="--epsilon", stage="privacy")
  delta: float = setting(1e-5, "privacy budget delta", flag="--delta", stage="privacy")
  accountant: str = setting("pld", "noise calibration", flag="--accountant", stage="privacy",
                            choices=parameters.ACCOUNTANTS)
  adjacency: str = setting("replace_one", "neighbouring datasets", flag="--adjacency",
                           stage="privacy", choices=parameters.ADJACENCIES)
  # Under add/remove the number of private examples differs between neighbours,
  # so it is private: the mean divides by this declared public count instead
  # (e.g. the dataset's published size). Unused under replace-one, where
  # neighbours have the same size.
  public_num_examples: int | None = setting(
      None, "add_remove: the public count the mean divides by", flag="--public-num-examples",
      stage="privacy", none="released with its own noise, charged")
  # An int makes the noise reproducible (experiments only); it is recorded as
  # such in privacy.json.
  noise_seed: int | None = setting(None, "reproducible privacy noise, for experiments only",
                                   flag="--noise-seed", stage="privacy", none="OS entropy")
  # A second, noisier release of the same embedding (noise std
  # validation_noise_scale x the main one; the budget covers both) used only to
  # pick the training checkpoint whose synthetic embedding is closest to it
  # (DP-MEPF's model selection; 10 there).
  validation_noise_scale: float | None = setting(
      None, "release a K x noisier copy too, to pick the checkpoint by",
      flag="--validation-noise-scale",
      stage="privacy", metavar="K", none="off")
  seed: int = setting(0, "public seed of networks and batches", flag="--seed",
                      stage="run")
  # The NTK network (DP-NTK and VP-NTK features; the public-model metric).
  ntk_layers: tuple = (800, "relu", "layernorm", 10)
  ntk_init: str = "torch"
  # cosine_weight is VP-NTK's alpha in ||mu_p - mu_s||^2 + alpha * (1 - cos(mu_p, mu_s)).
  loss: str | None = setting(None, "objective", flag="--loss", stage="training",
                             choices=LOSSES, none="the method's")
  cosine_weight: float = setting(1.0, "weight of the cosine term", flag="--alpha",
                                 stage="training")
  # Of every host in a multi-host job. Changes only float rounding.
  devices: int | None = setting(None, "data-parallel devices", flag="--devices", stage="run",
                                none="all")
  # Generator training (post-processing of the release).
  train: TrainConfig = TrainConfig()
  # Synthesis and evaluation.
  num_synthetic: int = setting(60000, "synthetic examples to generate",
                               flag="--num-synthetic", stage="synthesis")
  classifiers: tuple = setting(
      DEFAULT_CLASSIFIERS, f"a subset of {', '.join(CLASSIFIERS)}", flag="--classifiers",
      stage="evaluation",
      metavar="NAME,...", parse=blocks.names)
  # False: metrics.json then says nothing was evaluated, and why.
  evaluate: bool = setting(True, "synthesize only, evaluate nothing",
                           flag="--skip-evaluation", stage="evaluation")
  # pytorch-fid's network (vpntk_jax.models.inception says how to convert its weights).
  fid_weights: str | None = setting(None, "Inception FID/KID with pytorch-fid's weights "
                                    "from this .npz", flag="--fid-weights", stage="evaluation",
                                    metavar="FILE", none="not computed")
  fid_stats: str | None = setting(None, "FID against this .npz of (mu, sigma)",
                                  flag="--fid-stats",
                                  stage="evaluation", metavar="FILE")
  # Class-balanced.
  fid_samples: int = setting(10000, "synthetic images for the Inception and VGG16 distances",
                             flag="--fid-samples", stage="evaluation")
  # A `vpntk public vgg16` directory: metrics.json's "vgg16_frechet" (not an FID).
  vgg16_frechet: str | None = setting(None, "Frechet distance in the features of this "
                                      "`vpntk public vgg16` model",
                                      flag="--vgg16-frechet", stage="evaluation", metavar="DIR",
                                      none="not computed")
  eval_train_size: int = setting(6000, "synthetic examples the classifiers train on",
                                 flag="--eval-train-size", stage="evaluation")
  cnn_epochs: int = setting(10, "CNN epochs", flag="--cnn-epochs", stage="evaluation")
  # The method's own block (None: the method's defaults).
  options: Any = None

  def __post_init__(self):
    if not isinstance(self.data, DataConfig):
      raise ConfigError(f"data must be a DataConfig (vpntk_jax.blocks), got {self.data!r}: "
                        f"write data=DataConfig(source=...)")
    if self.options is None and self.method in methods.names():
      object.__setattr__(self, "options", methods.get(self.method).options())
    default_delta = next(f.default for f in dataclasses.fields(RunConfig) if f.name == "delta")
    object.__setattr__(self, "delta",
                       protocols.resolved_delta(self.protocol, self.delta, default_delta))

  @property
  def method_spec(self) -> methods.Method:
    return methods.get(self.method)

  def validate(self) -> "RunConfig":
    spec = methods.get(self.method)
    if not isinstance(self.options, spec.options):
      raise ConfigError(f"options is a {type(self.options).__name__}; {self.method} takes "
                        f"{spec.options.__module__}.{spec.options.__name__}")
    self.data.validate()
    protocols.check(self)
    parameters.check_epsilon_delta(self.epsilon, self.delta)
    parameters.check_accountant(self.accountant)
    parameters.check_adjacency(self.adjacency)
    if self.public_num_examples is not None:
      if self.adjacency != "add_remove":
        raise ConfigError("public_num_examples applies to --adjacency add_remove only; "
                          "under replace-one the count is the same for neighbours")
      if not (isinstance(self.public_num_examples, int)
              and not isinstance(self.public_num_examples, bool)
              and self.public_num_examples >= 1):
        raise ConfigError(f"public_num_examples must be an integer >= 1, got "
                          f"{self.public_num_examples!r}")
    if self.fid_stats is not None and self.fid_weights is None:
      raise ConfigError("fid_stats (--fid-stats) needs the Inception weights too "
                        "(--fid-weights FILE)")
    if not (isinstance(self.fid_samples, int) and self.fid_samples >= 2):
      raise ConfigError(f"fid_samples must be an integer >= 2, got {self.fid_samples!r}")
    if self.num_synthetic <= 0 or self.eval_train_size <= 0:
      raise ConfigError("num_synthetic and eval_train_size must be positive")
    if not (isinstance(self.seed, int) and self.seed >= 0):
      raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
    unknown = [name for name in self.classifiers if name not in CLASSIFIERS]
    if unknown:
      raise ConfigError(f"unknown classifiers {unknown}; expected a subset of {CLASSIFIERS}")
    if self.loss is not None and self.loss not in LOSSES:
      raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
    if not self.cosine_weight >= 0:
      raise ConfigError(f"cosine_weight must be >= 0, got {self.cosine_weight}")
    if self.validation_noise_scale is not None:
      if not (isinstance(self.validation_noise_scale, (int, float))
              and math.isfinite(self.validation_noise_scale)
              and self.validation_noise_scale > 0):
        raise ConfigError(f"validation_noise_scale must be a finite number > 0, got "
                          f"{self.validation_noise_scale!r}")
      if self.accountant == "analytic":
        raise ConfigError("a validation release makes two releases; the analytic accountant "
                          "covers one: use --accountant pld or rdp")
    self.options.validate()
    return self

  def resolved_loss(self) -> str:
    return self.loss or methods.get(self.method).default_loss

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["ntk_layers"] = list(self.ntk_layers)
    d["classifiers"] = list(self.classifiers)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "RunConfig":
    """Reads config.json, also in the flat layout runs stored before method blocks."""
    d = upgrade_json(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ConfigError(f"unknown config fields {sorted(unknown)}")
    spec = methods.get(d.get("method", cls.method))
    try:
      d["data"] = DataConfig(**d.get("data", {}))
      d["train"] = TrainConfig(**d.get("train", {}))
      d["options"] = _block(spec.options, d.get("options") or {})
    except TypeError as e:
      raise ConfigError(f"bad nested config: {e}") from None
    d["ntk_layers"] = tuple(d.get("ntk_layers", cls.ntk_layers))
    d["classifiers"] = tuple(d.get("classifiers", cls.classifiers))
    return cls(**d)


def _block(cls: type, d: dict) -> Any:
  """A (possibly nested) config dataclass from its JSON dict."""
  hints = {f.name: f for f in dataclasses.fields(cls)}
  values = {}
  for k, v in d.items():
    default = getattr(cls(), k) if k in hints else None
    values[k] = (_block(type(default), v) if dataclasses.is_dataclass(default)
                 and isinstance(v, dict) else v)
  return cls(**values)


def upgrade_json(d: dict) -> dict:
  """A copy of a stored config.json dict with the fields of the flat layout (before
  data and method blocks) moved into their blocks; current ones come back as they are."""
  d = data_from_legacy(dict(d))
  if "options" in d:
    return d
  method = d.get("method", RunConfig.method)
  moved = methods.get(method).legacy_fields if method in methods.names() else {}
  d["options"] = {new: d[old] for old, new in moved.items() if old in d}
  for old in methods.legacy_fields():
    d.pop(old, None)
  return d


# Fields a resumed run may change: they do not touch the release.
RESUMABLE_CHANGES = frozenset({"train.steps", "classifiers", "evaluate", "eval_train_size",
                               "cnn_epochs", "num_synthetic", "devices", "fid_weights",
                               "fid_stats", "fid_samples", "vgg16_frechet"})


# Fields that only shape what is done with a release (post-processing). Runs
# that agree on every other field have the same release, so one may reuse the
# other's (`--reuse-release`): ablations over these cost no extra privacy.
POST_PROCESSING_FIELDS = frozenset({"loss", "cosine_weight", "classifiers", "evaluate",
                                    "eval_train_size", "cnn_epochs", "num_synthetic", "devices",
                                    "fid_weights", "fid_stats", "fid_samples",
                                    "vgg16_frechet"})
POST_PROCESSING_PREFIXES = ("train.",)


def release_reads_public_model(config: RunConfig) -> bool:
  """Whether the public models enter the released statistic (its feature map)."""
  return config.method_spec.release_reads_public_model(config.options)


def release_differences(a: RunConfig, b: RunConfig) -> list[str]:
  """Fields that differ between a and b and change the private release."""
  # Where the release is taken on pixels, the public generator is only what
  # the prompts train on, so a better public model may reuse the release.
  public_is_post_processing = not (release_reads_public_model(a)
                                   or release_reads_public_model(b))
  same_method = a.method == b.method

  def changes_release(k: str) -> bool:
    if k in POST_PROCESSING_FIELDS or k.startswith(POST_PROCESSING_PREFIXES):
      return False
    if same_method and k.startswith("options."):
      field = k[len("options."):]
      if field == "public_model" and public_is_post_processing:
        return False
      return not a.method_spec.is_post_processing(field)
    return True

  return [k for k in diff(a, b) if changes_release(k)]


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
  """Applies {"epsilon": 1, "train.steps": 10, "options.prompt.kappa": 0.5, ...};
  None values are skipped.

  Strings are parsed by the field's type (command-line `--config.x=y`);
  other values are used as given. A new `method` applies first and brings its
  own default block, which the `options.*` overrides then change.
  """
  overrides = {k: v for k, v in overrides.items() if v is not None}
  if "method" in overrides:
    method = overrides.pop("method")
    if method != config.method:
      methods.get(method)  # unknown names fail here, naming the choices
      config = dataclasses.replace(config, method=method, options=None)
  return config_files.apply_overrides(config, overrides)
