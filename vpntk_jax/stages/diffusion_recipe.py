"""The diffusion family (PrivImage, DPDM): a class-conditional EDM UNet, pretrained
on public images, fine-tuned on the private set with DP-SGD, sampled by Heun.

PrivImage first asks which public classes resemble the private ones: the
semantic query (`stages.semantic_query`), one Gaussian release of a vote
histogram, from which the public classes are selected and relabelled
(post-processing); the model is pretrained on that subset. DPDM pretrains on
the whole public pool with every label the null class (unconditional), or not
at all. The DP-SGD noise multiplier is calibrated once for the whole run: the
query's fixed noise and the T steps composed in one accountant
(`privacy.plan.DpSgdPlan`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import distributed
from vpntk_jax import io_utils
from vpntk_jax.blocks import start_model_name
from vpntk_jax.data import ImageDataset, load_dataset, make_dataset, resize_dataset
from vpntk_jax.diffusion import edm
from vpntk_jax.diffusion.train import pretrain_edm
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.models import unet
from vpntk_jax.public import pretrain_cache
from vpntk_jax.public.diffusion_model import load_diffusion_model, start_params
from vpntk_jax.privacy import PrivacyLedger
from vpntk_jax.privacy.noise import release_streams
from vpntk_jax.privacy.plan import DpSgdPlan, check_fixed_releases, new_ledger
from vpntk_jax.privacy.release import release_statistic
from vpntk_jax.privacy import subsampled
from vpntk_jax.run_files import PRETRAIN_CHECKPOINTS, QUERY_SELECTION, TRAIN_LOG
from vpntk_jax.stages import mean_embedding, private_training, semantic_query
from vpntk_jax.stages.recipe import Recipe
from vpntk_jax.staging import check_can_create
from vpntk_jax.training.samplers import TrainState
from vpntk_jax.log import say

QUERY_ARRAY = "query_histogram"


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionSampler:
  """The Sampler protocol over an EDM UNet: the latent is the initial noise (one
  per pixel), the image the Heun solution from it, with the EMA weights (the
  state's model_state)."""
  apply_fn: Any
  image_shape: tuple[int, int, int]
  num_steps: int
  guidance_scale: float
  null_label: int
  batch_size: int

  @property
  def latent_dim(self) -> int:
    return math.prod(self.image_shape)

  def apply(self, params, model_state, z, labels, *, train: bool):
    del params, train  # synthesis samples from the EMA weights
    noise = jnp.reshape(z, (-1,) + tuple(self.image_shape))
    x = edm.heun(self.apply_fn, model_state, noise, labels, num_steps=self.num_steps,
                 guidance_scale=self.guidance_scale, null_label=self.null_label)
    return (x + 1.0) * 0.5, model_state


class PublicStart:
  """Where the diffusion model starts before DP-SGD, a part a recipe composes. This
  base is the start from scratch: no one-shot release, nothing to pretrain on."""
  other_sigmas: tuple[float, ...] = ()  # fixed-noise releases DP-SGD shares the budget with

  def check_budget(self, config, *, dp_steps: int) -> None:
    del config, dp_steps

  def release_arrays(self) -> dict[str, str]:
    return {}

  def private_statistic(self, private: ImageDataset, num_classes: int, *, quiet: bool):
    del private, num_classes, quiet

  def release(self, statistic, private: ImageDataset, config, *, prior, quiet: bool):
    del statistic, private, quiet
    return {}, new_ledger(config, prior)

  def training_set(self, release, run, model_config) -> tuple:
    """The public images pretraining uses and their labels; (None, None): none."""
    del release, run, model_config
    return None, None

  def class_rows(self, release, num_classes: int) -> list[list[int]]:
    """For each private class, the start model's classes whose label rows it starts
    from (empty: the null row)."""
    del release
    return [[] for _ in range(num_classes)]


class LabelledStart(PublicStart):
  """A start model whose first classes are the private classes (no pool): class c
  starts from its row c."""

  def class_rows(self, release, num_classes: int) -> list[list[int]]:
    del release
    return [[c] for c in range(num_classes)]


@dataclasses.dataclass(frozen=True, eq=False)
class PoolStart(PublicStart):
  """DPDM's start: pretraining on a whole public pool, with its labels (`conditional`:
  they are the private classes) or every label the null class."""
  pool: ImageDataset
  conditional: bool

  def training_set(self, release, run, model_config) -> tuple:
    del release, run
    if self.conditional:
      return self.pool.images, self.pool.labels.astype(np.int32)
    return self.pool.images, np.full(len(self.pool), model_config.null_label, np.int32)

  def class_rows(self, release, num_classes: int) -> list[list[int]]:
    return (LabelledStart() if self.conditional else PublicStart()).class_rows(
        release, num_classes)


@dataclasses.dataclass(frozen=True, eq=False)
class SemanticQuery(PublicStart):
  """PrivImage's start: the public classifier votes which pool classes resemble each
  private class (one noisy histogram); pretraining on the selected classes,
  relabelled (post-processing). `settings`: `methods.privimage.QueryConfig`."""
  classifier: Any  # public.PublicModels with a ConvExtractor classifier
  pool: ImageDataset
  settings: Any

  @property
  def other_sigmas(self) -> tuple[float, ...]:
    return (self.settings.noise_multiplier,)

  def check_budget(self, config, *, dp_steps: int) -> None:
    # The query's noise is fixed, not calibrated: its epsilon must fit the budget,
    # and leave room for DP-SGD when there are steps.
    check_fixed_releases({f"the semantic query (--query-noise "
                          f"{self.settings.noise_multiplier:g})":
                          self.settings.noise_multiplier}, config, room_left=dp_steps > 0)

  def release_arrays(self) -> dict[str, str]:
    return {semantic_query.RELEASE_NAME: QUERY_ARRAY}

  def private_statistic(self, private: ImageDataset, num_classes: int, *, quiet: bool):
    from vpntk_jax import public  # pylint: disable=g-import-not-at-top
    say(f"semantic query: classifying the private images into {self.pool.num_classes} "
        f"public classes", quiet)
    logits = public.classifier_logits(self.classifier, private.images)
    votes = semantic_query.top_k_classes(logits, self.settings.top_k)
    return semantic_query.vote_histogram(private.labels, votes, num_classes,
                                         self.pool.num_classes)

  def release(self, statistic, private: ImageDataset, config, *, prior, quiet: bool):
    settings = self.settings
    sensitivity = semantic_query.histogram_sensitivity(settings.top_k, config.adjacency)
    noisy, record = release_statistic(
        semantic_query.RELEASE_NAME, statistic, sensitivity=sensitivity,
        sigma=settings.noise_multiplier,
        stream=release_streams(config.noise_seed, [semantic_query.RELEASE_NAME])[
            semantic_query.RELEASE_NAME],
        budget=config, num_examples=private_training.public_count(config, private),
        num_examples_source=mean_embedding.count_source(config),
        notes=f"semantic query: top-{settings.top_k} votes of the public classifier per "
              f"private image, (private classes x public classes)")
    say(f"released the semantic query histogram {noisy.shape}: sensitivity "
        f"{record.sensitivity:.3g}, noise std {record.noise_std:.3g}", quiet)
    return {QUERY_ARRAY: noisy}, new_ledger(config, prior).add(record)

  def training_set(self, release, run, model_config) -> tuple:
    selection = semantic_query.select_public_classes(release[QUERY_ARRAY],
                                                     self.settings.per_class)
    if distributed.is_primary():
      write_selection(run.file(QUERY_SELECTION), selection, self.pool,
                      model_config.num_classes, self.settings)
    rows, labels = semantic_query.relabel_public(self.pool.labels, selection)
    return self.pool.images[rows], labels

  def class_rows(self, release, num_classes: int) -> list[list[int]]:
    selection = semantic_query.select_public_classes(release[QUERY_ARRAY],
                                                     self.settings.per_class)
    return [[int(p) for p in selection[c]] for c in range(num_classes)]


def load_pool(source: str, image_shape, *, what: str) -> ImageDataset:
  """The public pool's train split at the run's image size and channels."""
  pool = resize_dataset(load_dataset(source, "train"), image_shape[0])
  channels = pool.images.shape[-1]
  if channels != image_shape[-1]:
    if channels != 1:
      raise DataError(f"{what} {source} has {channels} channels, the run {image_shape[-1]}")
    pool = make_dataset(np.repeat(pool.images, image_shape[-1], axis=-1), pool.labels,
                        pool.num_classes, name=pool.name, class_names=pool.class_names)
  return pool


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionRecipe(Recipe):
  """A class-conditional EDM UNet: a public start (`PublicStart`: from scratch, a pool,
  or PrivImage's query and its selection), DP-SGD fine-tuning (`dp`), and a Heun
  sampler; see `stages.recipe`."""
  model: unet.UNet
  options: Any  # the method's block: model, pretrain, dp_sgd (vpntk_jax.blocks)
  sampler: DiffusionSampler
  start: PublicStart
  dp: private_training.DpSgdTraining  # the fine-tuning (`unet_dp_sgd`)
  # A public diffusion model the UNet starts from (its weights, and label rows chosen
  # by `start.class_rows`); None: a random initialisation.
  start_model: Any = None

  @property
  def apply_fn(self):
    return self.sampler.apply_fn

  @property
  def num_classes(self) -> int:
    return self.model.config.num_classes

  def plan(self, config, private: ImageDataset) -> DpSgdPlan:
    return self.dp.plan(config, private, self.start.other_sigmas)

  def preflight(self, private: ImageDataset, config, *, mesh=None) -> None:
    self.start.check_budget(config, dp_steps=self.dp.settings.steps)
    self.dp.check(private, config, other_sigmas=self.start.other_sigmas, mesh=mesh)

  def abstract_state(self, config, num_classes: int) -> TrainState:
    del num_classes
    params = jax.eval_shape(lambda key: unet.init_params(self.model, key),
                            jax.random.key(config.seed))
    return TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                      model_state=params, opt_state=())

  def release_arrays(self, config) -> dict[str, str]:
    del config
    return self.start.release_arrays()

  def private_statistic(self, private: ImageDataset, config, *, mesh=None,
                        quiet: bool = False):
    del config, mesh
    return self.start.private_statistic(private, self.num_classes, quiet=quiet)

  def release(self, statistic, private: ImageDataset, config, *,
              prior: PrivacyLedger | None = None, quiet: bool = False,
              show_private: bool = False):
    del show_private
    return self.start.release(statistic, private, config, prior=prior, quiet=quiet)

  def post_process(self, release: dict[str, np.ndarray], num_classes: int, config, run, *,
                   mesh=None, quiet: bool = False) -> TrainState:
    """The selection (PrivImage) and public pretraining; returns the DP-SGD start."""
    del num_classes, mesh
    images, labels = self.start.training_set(release, run, self.model.config)
    if self.start_model is None:
      params = unet.init_params(self.model, jax.random.key(config.seed))
    else:
      params = start_params(self.start_model, self.model,
                            self.start.class_rows(release, self.num_classes))
    if images is not None and self.options.pretrain.steps > 0:
      params = self.pretrain(params, images, labels, config, run, quiet=quiet)
    return TrainState(step=np.asarray(0, np.int32), params=params, model_state=params,
                      opt_state=self.dp.optimizer.init(params))

  def pretrain(self, params, images: np.ndarray, labels: np.ndarray, config, run, *,
               quiet: bool = False):
    """Non-private EDM training on public images (checkpointed, resumable); returns the
    EMA weights. With `pretrain.cache_dir`, a finished pretraining of the same start,
    images, labels, settings and seed is reused (PrivImage: the same selection)."""
    settings = self.options.pretrain
    cached = None
    if settings.cache_dir:
      cached = pretrain_cache.entry(settings.cache_dir, params, images, labels,
                                    dataclasses.replace(settings, cache_dir=None),
                                    seed=config.seed)
      found = pretrain_cache.load(cached, self.model)
      if found is not None:
        say(f"public pretraining: reusing {cached}", quiet)
        return found
    ema = pretrain_edm(self.apply_fn, params, images, labels, settings,
                       num_classes=self.num_classes,
                       label_dropout=self.model.config.label_dropout, seed=config.seed,
                       checkpoint_dir=run.file(PRETRAIN_CHECKPOINTS),
                       log_path=run.file(TRAIN_LOG) if distributed.is_primary() else None,
                       quiet=quiet)
    if cached is not None and distributed.is_primary():
      pretrain_cache.store(cached, self.model, ema)
    return ema

  def train_on_private(self, state: TrainState, private: ImageDataset, config, run, *,
                       ledger: PrivacyLedger, charge, mesh=None,
                       quiet: bool = False) -> TrainState:
    return self.dp.train(state, private, config, run, ledger=ledger, charge=charge,
                         other_sigmas=self.start.other_sigmas, mesh=mesh, quiet=quiet)


def unet_dp_sgd(model: unet.UNet, settings) -> private_training.DpSgdTraining:
  """DP-SGD of a UNet (all of it, or `settings.trainable`'s subset): the EDM loss of
  one private example (its label dropped to the null class at the model's rate),
  `settings` a blocks.DpSgdConfig."""
  num_classes, label_dropout = model.config.num_classes, model.config.label_dropout
  trainable = None if settings.trainable == "all" else unet.TRAINABLE[settings.trainable]
  # Per-example gradients of the convolutions' kernels: faster as matmuls
  # (UNet.matmul_convs); the subsets train no convolution.
  apply_fn = unet.make_apply_fn(model.clone(matmul_convs=trainable is None))

  def loss_fn(params, example, key):
    image, label = example
    return edm.per_example_loss(params, apply_fn, image, label, key,
                                multiplicity=settings.multiplicity, num_classes=num_classes,
                                label_dropout=label_dropout)
  return private_training.DpSgdTraining(
      settings, loss_fn, lambda: unet.init_params(model, jax.random.key(0)),
      tuple(model.config.image_shape), trainable=trainable)


def write_selection(path: str, selection: np.ndarray, pool: ImageDataset, num_classes: int,
                    settings) -> None:
  """The public classes chosen per private class (post-processing of the query's
  release): a public artefact of the run."""
  names = pool.class_names or tuple(str(c) for c in range(pool.num_classes))
  io_utils.write_json_atomic(path, {
      "what": "public classes selected per private class from the noisy semantic-query "
              "histogram (post-processing of that release)",
      "top_k": settings.top_k, "per_class": settings.per_class,
      "pool": pool.name,
      "selection": {str(c): {"public_classes": [int(p) for p in selection[c]],
                             "public_class_names": [names[int(p)] for p in selection[c]]}
                    for c in range(num_classes)},
  })


def check_dp_sgd_config(config) -> None:
  """What a DP-SGD method's config must satisfy, checked before any data is read."""
  if distributed.is_multi_process():
    raise ConfigError(f"{config.method} runs in one process (its DP-SGD noise is drawn on "
                      f"one host); multi-host jobs are not supported for it")
  if config.adjacency == "add_remove" and config.public_num_examples is None:
    raise ConfigError(f"{config.method} under --adjacency add_remove needs "
                      f"--public-num-examples N: the sampling rate and the expected batch "
                      f"size divide by N, which must be public")
  subsampled.check_supported(
      subsampled.dp_sgd_event(1.0, 0.5, 1, adjacency=config.adjacency,
                              num_examples=2 if config.options.dp_sgd.max_batch else None,
                              max_batch=1 if config.options.dp_sgd.max_batch else None),
      adjacency=config.adjacency, accountant=config.accountant)


def pool_start(source: str | None, image_shape, num_classes: int, *,
               conditional: bool = False, start_model: bool = False) -> PublicStart:
  """DPDM's start: pretraining on the pool `source` (None: none), after the start
  model if there is one."""
  if source is None:
    if conditional and not start_model:
      raise ConfigError("a conditional start needs a public pool (--public-data) or a "
                        "start model (--start-model)")
    return LabelledStart() if conditional else PublicStart()
  pool = load_pool(source, image_shape, what="public pool")
  if conditional and pool.num_classes > num_classes:
    raise ConfigError(f"a conditional pretraining uses the pool's labels as private "
                      f"classes: {source} has {pool.num_classes} classes, the run "
                      f"{num_classes}")
  return PoolStart(pool, conditional)


def query_start(source: str | None, image_shape, num_classes: int, settings, classifier,
                *, method: str) -> SemanticQuery:
  """PrivImage's start: the query of `classifier` into the pool `source`."""
  if source is None:
    raise ConfigError(f"{method} needs a public pool (--public-data)")
  pool = load_pool(source, image_shape, what="public pool")
  if pool.num_classes != classifier.num_classes:
    raise ConfigError(f"the public pool {source} has {pool.num_classes} classes; the "
                      f"public classifier {classifier.path} was trained on "
                      f"{classifier.num_classes}: the query votes in the classifier's "
                      f"classes, so they must be the pool's")
  semantic_query.check_top_k(settings.top_k, pool.num_classes)
  if num_classes * settings.per_class > pool.num_classes:
    raise ConfigError(f"the public pool has {pool.num_classes} classes; {num_classes} "
                      f"private classes x {settings.per_class} each need "
                      f"{num_classes * settings.per_class}")
  return SemanticQuery(classifier=classifier, pool=pool, settings=settings)


def build(config, image_shape, num_classes: int, start: Callable[[], PublicStart]
          ) -> DiffusionRecipe:
  """The recipe of a privimage or dpdm run from its public start (`pool_start`,
  `query_start`; called after the config's own DP-SGD checks); checks everything it
  can without the private data."""
  check_dp_sgd_config(config)
  options = config.options
  if options.pretrain.cache_dir and options.pretrain.steps:
    # Written after the release and the pretraining: a failure then would waste both.
    check_can_create(options.pretrain.cache_dir, "--pretrain-cache")
  public = load_start_model(options, image_shape)
  if public is None:
    model_config = unet.unet_config(options.model.size, image_shape, num_classes,
                                    label_dropout=options.model.label_dropout)
  else:
    model_config = dataclasses.replace(public.config, num_classes=num_classes,
                                       label_dropout=options.model.label_dropout)
  model = unet.UNet(model_config)
  sampler = DiffusionSampler(unet.make_apply_fn(model), tuple(image_shape),
                             options.model.sample_steps, float(options.model.guidance_scale),
                             model_config.null_label, options.model.sample_batch)
  return DiffusionRecipe(model=model, options=options, sampler=sampler, start=start(),
                         dp=unet_dp_sgd(model, options.dp_sgd),
                         start_model=public)


def load_start_model(options, image_shape):
  """The public diffusion model `options.start_model` names (None: none), checked
  against the run's images and UNet size."""
  name = start_model_name(options.start_model)
  if name is None:
    return None
  public = load_diffusion_model(name)
  if tuple(public.config.image_shape) != tuple(image_shape):
    raise ConfigError(f"the start model {options.start_model} was trained on "
                      f"{tuple(public.config.image_shape)} images; the private data is "
                      f"{tuple(image_shape)} (--start-model none trains from scratch)")
  size = public.spec.get("size")
  if options.model.size != size:
    raise ConfigError(f"the start model {options.start_model} is a {size} UNet; the run "
                      f"asks for {options.model.size} (--unet-size): leave it out, or "
                      f"--start-model none to train a {options.model.size} one from scratch")
  return public
