"""Tokens for a frozen public diffusion model, learned from the private images:
DPAgg-TI (a noisy aggregate of per-image tokens) and DP-SGD-TI (one token per
class trained with DP-SGD), sampled by the same Heun sampler.

DPAgg-TI. Each private image gets its own token by textual inversion
(`diffusion.inversion`), scaled to norm <= 1; the labelled sum of the tokens,
sum_i u_i e_{y_i}^T (token_dim x classes), is released once with the Gaussian
mechanism, exactly as the one-release family releases its mean embedding
(same sensitivity, lattice noise, ledger; `stages.mean_embedding`). Column c is
then class c's centroid direction; every released column is rescaled to the
median norm of the public model's own label tokens (a public number), so the
private class counts never enter. With a sampling rate q < 1 each image is
inverted only if a secret Poisson draw includes it, and the sum over the
sampled images, divided by the public expected count qN, is released as one
subsampled Gaussian step (the DP-SGD accounting with one step and clip 1).

DP-SGD-TI. The (classes x token_dim) tokens are the only parameters DP-SGD
trains (`stages.private_training`), the network frozen; the same plan,
charging and checkpoints as PrivImage's fine-tuning.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax.data import ImageDataset
from vpntk_jax.diffusion import edm, inversion
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.models import unet
from vpntk_jax.privacy import PrivacyLedger, subsampled
from vpntk_jax.privacy import example_keys
from vpntk_jax.privacy.noise import poisson_selection, release_streams
from vpntk_jax.privacy.plan import DpSgdPlan, new_ledger
from vpntk_jax.privacy.release import release_statistic
from vpntk_jax.stages import mean_embedding, private_training
from vpntk_jax.stages.diffusion_recipe import DiffusionSampler
from vpntk_jax.stages.private_training import public_count
from vpntk_jax.stages.recipe import Recipe
from vpntk_jax.training.samplers import TrainState
from vpntk_jax.log import say

SUBSAMPLED_RELEASE_NAME = "token_aggregate"
SUBSAMPLED_MECHANISM = "poisson_gaussian"


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSampler(DiffusionSampler):
  """The Heun sampler conditioned on tokens: model_state is the (classes, token_dim)
  tokens, and class c is generated from token c (guidance against the null token)."""
  unet_params: Any = None
  null_token: Any = None

  def apply(self, params, model_state, z, labels, *, train: bool):
    del params, train
    tokens = jnp.concatenate([jnp.asarray(model_state, jnp.float32),
                              jnp.asarray(self.null_token, jnp.float32)[None]])
    noise = jnp.reshape(z, (-1,) + tuple(self.image_shape))
    x = edm.heun(self.apply_fn, {"unet": self.unet_params, "tokens": tokens}, noise, labels,
                 num_steps=self.num_steps, guidance_scale=self.guidance_scale,
                 null_label=tokens.shape[0] - 1)
    return (x + 1.0) * 0.5, model_state


def public_token_norm(tokens: np.ndarray) -> float:
  """The median norm of the public model's class tokens (its table without the null row)."""
  return float(np.median(np.linalg.norm(np.asarray(tokens[:-1], np.float64), axis=1)))


def centroid_tokens(released: np.ndarray, public_tokens: np.ndarray) -> np.ndarray:
  """(classes, token_dim) tokens from a released (token_dim, classes) sum: each column's
  direction at the public token norm; a zero column falls back to the public mean token."""
  columns = np.asarray(released, np.float64).T
  norms = np.linalg.norm(columns, axis=1, keepdims=True)
  fallback = np.mean(np.asarray(public_tokens[:-1], np.float64), axis=0)
  fallback /= max(np.linalg.norm(fallback), np.finfo(np.float64).tiny)
  directions = np.where(norms > 0, columns / np.where(norms > 0, norms, 1.0), fallback)
  return (directions * public_token_norm(public_tokens)).astype(np.float32)


def read_token_file(path: str, token_dim: int) -> np.ndarray:
  """Per-image tokens computed elsewhere: a .npy (n, token_dim) array, or a .npz with
  one such array "embeddings"; row i belongs to private image i."""
  if not os.path.isfile(path):
    raise DataError(f"--ti-embeddings {path}: no such file")
  try:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
      with loaded:
        if "embeddings" not in loaded.files:
          raise DataError(f"--ti-embeddings {path}: the .npz has no array 'embeddings' "
                          f"(it has {', '.join(loaded.files) or 'none'})")
        loaded = loaded["embeddings"]
  except (ValueError, OSError) as e:
    raise DataError(f"--ti-embeddings {path}: not a .npy or .npz array file ({e})") from None
  tokens = np.asarray(loaded)
  if tokens.ndim != 2 or tokens.shape[1] != token_dim or not np.issubdtype(tokens.dtype,
                                                                          np.number):
    raise DataError(f"--ti-embeddings {path}: expected a numeric (n, {token_dim}) array (the "
                    f"public model's token length), got {tokens.dtype} {tokens.shape}")
  if not np.all(np.isfinite(tokens)):
    raise DataError(f"--ti-embeddings {path}: holds NaN or inf")
  return tokens.astype(np.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenFeatures:
  """Per-image unit tokens as a feature map: norm <= 1, and the labelled sum is the
  one-release family's statistic (`mean_embedding.release_embedding`)."""
  apply_fn: Callable
  unet_params: Any
  public_tokens: np.ndarray  # the public label table, null row last
  settings: Any  # methods.dpagg_ti.InversionConfig
  key: Any  # the run's secret key of per-image randomness (`privacy.example_keys`)
  given: np.ndarray | None = None  # --ti-embeddings: rows computed elsewhere

  @property
  def norm_bound(self) -> float:
    return 1.0

  def tokens(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
             progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The tokens of images[j] (label labels[j], dataset row rows[j]) as inverted
    (what a --ti-embeddings file holds, row for row), starting from the public mean
    token. An image's inversion key is secret and follows the image, not its row."""
    if self.given is not None:
      return self.given[rows]
    s = self.settings
    return inversion.invert_images(
        self.apply_fn, self.unet_params, self.public_tokens[-1],
        np.mean(self.public_tokens[:-1], axis=0), images,
        example_keys.record_keys(self.key, images, labels), steps=s.steps, learning_rate=s.learning_rate, multiplicity=s.multiplicity,
        chunk_size=s.chunk_size, progress=progress)

  def unit_tokens(self, images: np.ndarray, labels: np.ndarray, rows: np.ndarray,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The tokens scaled to norm <= 1."""
    return np.asarray(inversion.unit_rows(self.tokens(images, labels, rows, progress)))

  def labelled_sum(self, images, labels, rows, num_classes: int, progress=None) -> np.ndarray:
    """(token_dim, classes) sum of the unit tokens, column = label."""
    u = self.unit_tokens(images, labels, rows, progress)
    return u.T @ np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]

  def private_sum(self, images, labels, num_classes: int, progress=None, mesh=None):
    del mesh  # one device: the inversions are vmapped per chunk
    return self.labelled_sum(images, labels, np.arange(len(labels)), num_classes, progress)

  def describe(self) -> dict:
    s = self.settings
    return {"kind": "textual-inversion tokens", "token_dim": int(self.public_tokens.shape[1]),
            "source": "--ti-embeddings file" if self.given is not None else
            f"inverted here: {s.steps} Adam steps, lr {s.learning_rate}, {s.multiplicity} draws"}


@dataclasses.dataclass(frozen=True, eq=False)
class AggregateTokenRecipe(Recipe):
  """DPAgg-TI: one release of the per-image tokens' labelled sum (see the module doc):
  the one-release family's statistic and release (`stages.mean_embedding`) of the
  token features, or one subsampled Gaussian step; the centroids condition `sampler`."""
  features: TokenFeatures
  sampler: TokenSampler
  sampling_rate: float = 1.0

  @property
  def subsampled(self) -> bool:
    return self.sampling_rate < 1.0

  def check_auditable(self, config) -> None:
    if self.subsampled:
      raise ConfigError("vpntk audit covers the release without subsampling; audit with "
                        "sampling_rate 1")
    if self.features.given is not None:
      raise ConfigError("vpntk audit computes the tokens of the audited images itself; audit "
                        "without --ti-embeddings")

  def plan(self, config, private: ImageDataset) -> DpSgdPlan:
    """The subsampled release as one DP-SGD step of clip 1."""
    n = public_count(config, private)
    return DpSgdPlan.calibrate(epsilon=config.epsilon, delta=config.delta,
                               accountant=config.accountant, adjacency=config.adjacency,
                               num_examples=n, expected_batch_size=self.sampling_rate * n,
                               steps=1, clip_norm=1.0, noise_seed=config.noise_seed)

  def preflight(self, private: ImageDataset, config, *, mesh=None) -> None:
    del mesh
    given = self.features.given
    if given is not None and len(given) != len(private.labels):
      raise DataError(f"--ti-embeddings has {len(given)} rows; the private set has "
                      f"{len(private.labels)} images (row i must be image i's token)")
    if len(private.labels) < 2:
      raise DataError("the private set has one image: an aggregate of one token releases "
                      "that image's token; give at least 2 (a few hundred for a useful one)")
    if self.subsampled:
      self.plan(config, private)  # an infeasible budget fails here
    else:
      mean_embedding.check_release_plan(self.features, private, config)

  def release_arrays(self, config) -> dict[str, str]:
    if self.subsampled:
      return {SUBSAMPLED_RELEASE_NAME: mean_embedding.RELEASE_ARRAYS[
          mean_embedding.RELEASE_NAME]}
    return mean_embedding.release_arrays(config)

  def private_statistic(self, private: ImageDataset, config, *, mesh=None,
                        quiet: bool = False):
    if not self.subsampled:
      say(f"textual inversion of {len(private.labels)} private images", quiet,
          private=True)  # under add/remove the count is private: never in log.txt
      return mean_embedding.private_embedding_sum(self.features, private, mesh=mesh,
                                                  quiet=quiet)
    # The selection is part of the mechanism: secret, never stored or logged.
    rows = poisson_selection(config.noise_seed, len(private.labels), self.sampling_rate)
    say(f"textual inversion of a Poisson sample (rate {self.sampling_rate:g}) of the private "
        f"images", quiet)
    return self.features.labelled_sum(private.images[rows], private.labels[rows], rows,
                                      private.num_classes)

  def release(self, statistic, private: ImageDataset, config, *,
              prior: PrivacyLedger | None = None, quiet: bool = False,
              show_private: bool = False):
    if not self.subsampled:
      return mean_embedding.release_embedding(self.features, private, statistic, config,
                                              prior=prior, quiet=quiet,
                                              show_private=show_private)
    plan = self.plan(config, private)
    expected = plan.expected_batch_size
    # House units: noise std / the L2 sensitivity of the sum, 1 (add/remove) or 2.
    sensitivity = subsampled.event_multiplier(1.0, config.adjacency) / expected
    noisy, record = release_statistic(
        SUBSAMPLED_RELEASE_NAME, np.asarray(statistic, np.float64) / expected,
        sensitivity=sensitivity, sigma=plan.noise_multiplier,
        stream=release_streams(config.noise_seed, [SUBSAMPLED_RELEASE_NAME])[
            SUBSAMPLED_RELEASE_NAME],
        budget=config, num_examples=plan.num_examples,
        num_examples_source=mean_embedding.count_source(config),
        mechanism=SUBSAMPLED_MECHANISM, dp_event=subsampled.event_to_json(plan.event(1)),
        sampling_rate=plan.sampling_rate, steps=1, clip_norm=1.0,
        notes=f"DPAgg-TI: labelled sum of unit textual-inversion tokens over a Poisson sample "
              f"(rate {plan.sampling_rate:.6g}), divided by the expected count "
              f"{expected:.6g}")
    say(f"released the token aggregate {noisy.shape}: subsampled Gaussian, noise multiplier "
        f"{plan.noise_multiplier:.4g}", quiet)
    return {self.release_arrays(config)[SUBSAMPLED_RELEASE_NAME]: noisy}, new_ledger(
        config, prior).add(record)

  def abstract_state(self, config, num_classes: int) -> TrainState:
    return abstract_token_state((num_classes, self.features.public_tokens.shape[1]))

  def post_process(self, release: dict[str, np.ndarray], num_classes: int, config, run, *,
                   mesh=None, quiet: bool = False) -> TrainState:
    """The centroid tokens (post-processing of the release)."""
    del num_classes, config, run, mesh, quiet
    tokens = centroid_tokens(release["embedding"], self.features.public_tokens)
    return TrainState(step=np.asarray(0, np.int32), params=tokens, model_state=tokens,
                      opt_state=())


@dataclasses.dataclass(frozen=True, eq=False)
class DpSgdTokenRecipe(Recipe):
  """DP-SGD-TI: no one-shot release; the class tokens, started at the public mean
  token, are the only parameters DP-SGD trains (`token_dp_sgd`); the token sampler."""
  sampler: TokenSampler
  dp: private_training.DpSgdTraining
  initial_tokens: np.ndarray  # (classes, token_dim)

  def preflight(self, private: ImageDataset, config, *, mesh=None) -> None:
    self.dp.check(private, config, mesh=mesh)

  def abstract_state(self, config, num_classes: int) -> TrainState:
    del config, num_classes
    return abstract_token_state(self.initial_tokens.shape)

  def post_process(self, release, num_classes: int, config, run, *, mesh=None,
                   quiet: bool = False) -> TrainState:
    del release, num_classes, config, run, mesh, quiet
    tokens = jnp.asarray(self.initial_tokens)
    return TrainState(step=np.asarray(0, np.int32), params=tokens, model_state=tokens,
                      opt_state=self.dp.optimizer.init(tokens))

  def train_on_private(self, state: TrainState, private: ImageDataset, config, run, *,
                       ledger: PrivacyLedger, charge, mesh=None,
                       quiet: bool = False) -> TrainState:
    return self.dp.train(state, private, config, run, ledger=ledger, charge=charge,
                         mesh=mesh, quiet=quiet)


def token_dp_sgd(public, settings, initial_tokens: np.ndarray
                 ) -> private_training.DpSgdTraining:
  """DP-SGD of class tokens on the frozen public UNet (`public`, a
  public.diffusion_model.PublicDiffusion): the EDM loss of one private example conditioned
  on its class's token; `settings` a blocks.DpSgdConfig."""
  apply_fn = unet.token_apply_fn(public.model)
  unet_params, null = public.params, jnp.asarray(public.tokens[-1])

  def loss_fn(tokens, example, key):
    image, label = example
    params = {"unet": unet_params, "tokens": jnp.concatenate([tokens, null[None]])}
    return edm.per_example_loss(params, apply_fn, image, label, key,
                                multiplicity=settings.multiplicity)
  return private_training.DpSgdTraining(settings, loss_fn, lambda: jnp.asarray(initial_tokens),
                                        tuple(public.config.image_shape))


def abstract_token_state(shape: tuple[int, int]) -> TrainState:
  """A token sampler's state as shapes: (classes, token_dim) tokens."""
  tokens = jax.ShapeDtypeStruct(tuple(shape), np.float32)
  return TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=tokens,
                    model_state=tokens, opt_state=())


def token_sampler(public, settings, num_classes: int) -> TokenSampler:
  """The Heun sampler of the public model `public` (a `public.diffusion_model.PublicDiffusion`)
  conditioned on `num_classes` tokens; `settings` a `methods._inversion.SamplingConfig`."""
  return TokenSampler(unet.token_apply_fn(public.model), tuple(public.config.image_shape),
                      settings.sample_steps, float(settings.guidance_scale), num_classes,
                      settings.sample_batch, unet_params=public.params,
                      null_token=public.tokens[-1])


def check_public_model(public, image_shape) -> None:
  if tuple(public.config.image_shape) != tuple(image_shape):
    raise ConfigError(f"the public diffusion model {public.path} was trained on "
                      f"{tuple(public.config.image_shape)} images; the private data is "
                      f"{tuple(image_shape)}")


def build_aggregate(config, image_shape, num_classes: int) -> AggregateTokenRecipe:
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=g-import-not-at-top
  options = config.options
  public = load_diffusion_model(options.diffusion_model)
  check_public_model(public, image_shape)
  given = (read_token_file(options.ti_embeddings, unet.token_dim(public.config))
           if options.ti_embeddings else None)
  if options.sampling_rate < 1 and config.adjacency == "add_remove" and (
      config.public_num_examples is None):
    raise ConfigError("a sampling rate below 1 under --adjacency add_remove needs "
                      "--public-num-examples N: the expected sample size divides by N")
  features = TokenFeatures(unet.token_apply_fn(public.model), public.params, public.tokens,
                           options.inversion,
                           key=example_keys.run_key(config.noise_seed),
                           given=given)
  return AggregateTokenRecipe(features, token_sampler(public, options.sampling, num_classes),
                              sampling_rate=float(options.sampling_rate))


def build_dp_sgd(config, image_shape, num_classes: int) -> DpSgdTokenRecipe:
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import diffusion_recipe  # pylint: disable=g-import-not-at-top
  if config.options.dp_sgd.trainable != "all":
    raise ConfigError(f"{config.method} trains the tokens only: --dp-sgd-trainable "
                      f"{config.options.dp_sgd.trainable} does not apply to it")
  public = load_diffusion_model(config.options.diffusion_model)
  check_public_model(public, image_shape)
  diffusion_recipe.check_dp_sgd_config(config)
  # One token per private class, each the public model's mean label token.
  initial = np.tile(np.mean(public.tokens[:-1], axis=0, keepdims=True), (num_classes, 1))
  return DpSgdTokenRecipe(token_sampler(public, config.options.sampling, num_classes),
                          token_dp_sgd(public, config.options.dp_sgd, initial), initial)
