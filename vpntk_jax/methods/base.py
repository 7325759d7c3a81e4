"""What a method declares: its config block (whose `settings.setting` fields are its CLI
flags), what it needs, how it builds.

A method module in this package defines one `METHOD = Method(...)`. Its
module-level imports stay JAX-free (the registry, config loading and
`vpntk --help` read every method); `build` imports the JAX-side parts it
combines when a run actually starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from vpntk_jax.run_files import TRAIN_LOG
from vpntk_jax.settings import setting

# The shared RunConfig settings (dotted; a trailing "." covers a block) that only
# a generator trained on the release reads: its training, its objective, and
# the validation release that picks its checkpoint.
GENERATOR_SETTINGS = frozenset({"train.", "loss", "cosine_weight", "validation_noise_scale"})


def _never(options: Any) -> bool:
  del options
  return False


def _generator_log(options: Any) -> frozenset:
  del options
  return frozenset({TRAIN_LOG})


def _covers(fields: frozenset, field: str) -> bool:
  return any(field == p or (p.endswith(".") and field.startswith(p)) for p in fields)


@dataclasses.dataclass(frozen=True)
class Method:
  """A method: a named recipe over the shared stages.

  Attributes:
    name: what `--method` takes.
    summary: one line, for help and docs.
    options: the frozen dataclass of the method's own settings (RunConfig.options);
      its fields declared with `settings.setting(..., flag=...)` (nested blocks
      included) are `vpntk synthesize --method NAME` flags.
    build: (config, image_shape, num_classes, public_models) -> the run's recipe:
      its private mechanism(s) and post-processing (see `vpntk_jax.stages`).
      Called with the public models already loaded when `needs_public_models`.
    default_loss: the objective when RunConfig.loss is None.
    needs_public_models: the block has a `public_model` directory (`vpntk pretrain`).
    release_reads_public_model: whether the public models enter the released
      statistic (then a release may not be reused with other public models).
    post_processing: block fields (dotted; a trailing "." covers a sub-block)
      that only shape what is done with a release: changing them reuses it.
    legacy_fields: config.json fields of the flat layout (before method blocks)
      that this block took over, old name -> block field.
    trains_generator: post-processing trains a generator on the release, so the
      run reads GENERATOR_SETTINGS (otherwise they go unused).
    training_logs: block -> the training logs (`run_files` names) a complete run
      of it holds: what a report expects, so a method that trains nothing (or
      trains only under some settings) is not reported incomplete.
    dpimagebench_name: DPImageBench's name for the same method (its
      configs/<name>/ folder, eval.py's --method), or None where it has none.
  """
  name: str
  summary: str
  options: type
  build: Callable[..., Any]
  default_loss: str = "mmd"
  needs_public_models: bool = False
  release_reads_public_model: Callable[[Any], bool] = _never
  post_processing: frozenset = frozenset()
  legacy_fields: dict = dataclasses.field(default_factory=dict)
  trains_generator: bool = True
  training_logs: Callable[[Any], frozenset] = _generator_log
  dpimagebench_name: str | None = None

  def is_post_processing(self, field: str) -> bool:
    """Whether changing block field `field` (dotted) leaves the release as it is."""
    return _covers(self.post_processing, field)

  def reads_setting(self, field: str) -> bool:
    """Whether a run of this method reads the shared RunConfig field `field` (dotted)."""
    return self.trains_generator or not _covers(GENERATOR_SETTINGS, field)


# The flat-layout fields of methods that read public models.
PUBLIC_MODEL_LEGACY_FIELDS = {"public_model": "public_model",
                              "check_public_overlap": "check_public_overlap"}


# The fields of the methods that read public models.
def public_model_setting():
  return setting(None, "directory made by `vpntk pretrain` (or a converted VGG19 for dp-mepf)",
                 flag="--public-model", metavar="DIR")


def check_public_overlap_setting():
  return setting(False, "refuse if a public training image is also a private one",
                 flag="--check-public-overlap")
