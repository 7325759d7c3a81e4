"""The one-release family (DP-NTK, DP-MERF, DP-MEPF, VP-NTK): the labelled mean
embedding of the private set, released once with the Gaussian mechanism, then a
sampler trained to match it (post-processing, any number of steps)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np

from vpntk_jax import distributed
from vpntk_jax import training
from vpntk_jax.data import ImageDataset
from vpntk_jax.features import FeatureMap, ntk
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.privacy import PrivacyLedger
from vpntk_jax.privacy import diagnostics
from vpntk_jax.privacy.plan import ReleasePlan
from vpntk_jax.privacy.noise import release_streams
from vpntk_jax.privacy.release import released_count
from vpntk_jax.stages.recipe import Recipe
from vpntk_jax.run_files import CHECKPOINTS, SELECTION, SELECTION_CHECKPOINTS, TRAIN_LOG
from vpntk_jax.log import Progress, say

RELEASE_NAME = "labelled_mean_embedding"
VALIDATION_RELEASE_NAME = "validation_embedding"
COUNT_RELEASE_NAME = "private_count"
# Ledger name -> array name in release.npz.
RELEASE_ARRAYS = {RELEASE_NAME: "embedding", VALIDATION_RELEASE_NAME: "validation_embedding",
                  COUNT_RELEASE_NAME: "private_count"}
# The mean needs the count only to a relative error of about a percent, so the
# count's noise is this many times the embedding's; that costs about 1/100 of
# the budget (Gaussian noise multipliers compose as 1/sigma^2).
COUNT_NOISE_SCALE = 10.0


def ntk_network(config) -> ntk.NTKNetwork:
  return ntk.NTKNetwork(tuple(config.ntk_layers), config.ntk_init)


def counts_privately(config) -> bool:
  """Whether the run releases its private count: under add/remove without a
  declared public count (neighbours differ in size, so the count is private)."""
  return config.adjacency == "add_remove" and config.public_num_examples is None


def count_source(config) -> str:
  """Where the count the mean divides by comes from, as the ledger states it."""
  if config.adjacency != "add_remove":
    return "public: replace-one neighbours have the same number of examples"
  if config.public_num_examples is not None:
    return "declared public (public_num_examples); the private set is not counted"
  return f"released with noise ({COUNT_RELEASE_NAME}) and charged"


def release_scales(config) -> dict[str, float]:
  """Ledger name -> noise relative to the main release, for this config's releases."""
  scales = {RELEASE_NAME: 1.0}
  if config.validation_noise_scale is not None:
    scales[VALIDATION_RELEASE_NAME] = float(config.validation_noise_scale)
  if counts_privately(config):
    scales[COUNT_RELEASE_NAME] = COUNT_NOISE_SCALE
  return scales


def release_arrays(config) -> dict[str, str]:
  """Ledger name -> release.npz array name of what this config releases."""
  return {name: RELEASE_ARRAYS[name] for name in release_scales(config)}


def release_plan(config, num_examples: int, norm_bound: float) -> ReleasePlan:
  """The plan the run releases with, and that `vpntk audit` audits; `num_examples`
  is the public count the mean divides by (`divisor`)."""
  return ReleasePlan.for_mean(scales=release_scales(config), num_examples=num_examples,
                              norm_bound=norm_bound, epsilon=config.epsilon,
                              delta=config.delta, accountant=config.accountant,
                              adjacency=config.adjacency, noise_seed=config.noise_seed)


def check_release_plan(features: FeatureMap, private: ImageDataset, config) -> None:
  """Calibrates the run's releases before anything is written: a budget no noise can
  meet fails here, not after the run directory is opened. (The noise multipliers do
  not depend on the count the mean divides by, so the public one stands in for a
  count that is released.)"""
  release_plan(config, divisor(config, private, None), features.norm_bound)


def private_embedding_sum(features: FeatureMap, private: ImageDataset, *, mesh=None,
                          quiet: bool = False) -> jax.Array:
  """The exact (P, C) labelled embedding sum of the private set. Never stored.

  In a multi-host job every process takes part (each sums its share).
  """
  bar = Progress(total=len(private.labels), desc="private embedding", disable=quiet,
                 private=True, dynamic_ncols=True)
  done = [0]

  def progress(n):
    bar.update(n - done[0])
    done[0] = n

  total = features.private_sum(private.images, private.labels, private.num_classes,
                               progress=progress, mesh=mesh)
  bar.close()
  return ntk.embedding_to_matrix(total)


def divisor(config, private: ImageDataset, noisy_count: np.ndarray | None) -> int:
  """The public count the mean divides by: m under replace-one (public there), the
  declared count, or the released noisy count rounded (at least 1)."""
  if noisy_count is not None:
    return released_count(noisy_count)
  return config.public_num_examples or len(private.labels)


def release_embedding(features: FeatureMap, private: ImageDataset, total: jax.Array, config, *,
                      prior: PrivacyLedger | None = None, quiet: bool = False,
                      show_private: bool = False
                      ) -> tuple[dict[str, np.ndarray], PrivacyLedger]:
  """Releases the mean of `total`, the `private_embedding_sum`, once (Gaussian mechanism).

  Returns the release.npz arrays, {"embedding": noisy (P, C) matrix} plus
  "validation_embedding" (a second, noisier release of the same mean) when
  `config.validation_noise_scale` is set and "private_count" when the count is
  released (`counts_privately`), and the ledger with them added. The noise of
  all of them is calibrated for their composition.
  `show_private` prints exact private diagnostics to the terminal (marked).
  """
  scales = release_scales(config)
  streams = release_streams(config.noise_seed, scales)
  records, arrays = [], {}
  noisy_count = None
  t0 = time.perf_counter()
  notes = f"{config.method} features; per-example norm <= {features.norm_bound}"
  if counts_privately(config):
    # Its sigma does not depend on the count, only its sensitivity (1) does.
    noisy_count, record = release_plan(config, 1, features.norm_bound).release_count(
        COUNT_RELEASE_NAME, len(private.labels), stream=streams[COUNT_RELEASE_NAME],
        num_examples_source=count_source(config),
        notes=f"{notes}; the number of private examples, which the mean divides by")
    arrays[RELEASE_ARRAYS[COUNT_RELEASE_NAME]] = noisy_count
    records.append(record)
  m = divisor(config, private, noisy_count)
  plan = release_plan(config, m, features.norm_bound)
  for warning in release_warnings(m, config):
    say(f"WARNING: {warning}", quiet=False)
  # Divided as a JAX array, then in float64 on the host: the lattice rounding
  # needs float64, and it is one pass.
  exact = np.asarray(total / m, np.float64)
  if show_private:
    diagnostics.show(private_diagnostics(exact, private, plan.noise_std(RELEASE_NAME)))
  for name in (RELEASE_NAME, VALIDATION_RELEASE_NAME):
    if name not in scales:
      continue
    purpose = ("training target" if name == RELEASE_NAME else
               "model selection only (noise x{:g})".format(scales[name]))
    arrays[RELEASE_ARRAYS[name]], record = plan.release(
        name, exact, stream=streams[name], notes=f"{notes}; {purpose}",
        num_examples_source=count_source(config))
    records.append(record)
  ledger = plan.empty_ledger(prior)
  for record in records:
    ledger = ledger.add(record)
  # What the ledger records: the lattice's sensitivity and the noise drawn with it.
  say(f"released the embedding ({exact.shape[0]:,} x {exact.shape[1]}) in "
       f"{time.perf_counter() - t0:.1f} s: " +
       ", ".join(f"{r.name} sensitivity {r.sensitivity:.3g}, sigma {r.sigma:.4g} "
                 f"(noise std {r.noise_std:.3g})" for r in ledger.active_releases), quiet)
  return arrays, ledger


def release_warnings(num_examples: int, config) -> list[str]:
  """Settings under which the release is valid but weak; from public facts only
  (`num_examples` is the public count the mean divides by)."""
  if config.delta >= 1.0 / num_examples:
    return [f"delta {config.delta:g} >= 1/m = {1 / num_examples:.3g}: a mechanism that "
            f"publishes one random example outright would meet this delta; choose "
            f"delta << 1/m"]
  return []


def private_diagnostics(mean: np.ndarray, private: ImageDataset, noise_std: float) -> list[str]:
  """Exact facts about the private data that explain a useless release (see
  privacy/diagnostics.py: for the operator, when asked)."""
  lines = []
  empty = [c for c, n in enumerate(private.class_counts()) if n == 0]
  if empty:
    lines.append(f"classes {empty} have no private examples; their columns are pure noise")
  # Signal-to-noise ratio of the whole release (Frobenius norms).
  snr = float(np.linalg.norm(mean)) / (noise_std * math.sqrt(mean.size))
  lines.append(f"signal-to-noise of the release {snr:.3g}" +
               ("; the noise swamps the embedding: expect poor synthetic data" if snr < 0.1
                else ""))
  return lines


@dataclasses.dataclass(frozen=True, eq=False)
class MeanEmbeddingRecipe(Recipe):
  """One private mechanism (the labelled mean of `features`, released once) and one
  post-processing stage (`sampler` trained to match the release); see
  `stages.recipe` for the protocol.

  Every process of a multi-host job computes its share of the private
  statistic; the release (noise and ledger) happens once, on the primary.
  """
  features: FeatureMap
  sampler: Any

  def check_auditable(self, config) -> None:
    """`vpntk audit` re-runs this release on neighbouring sets: always possible here."""
    del config

  def preflight(self, private: ImageDataset, config, *, mesh=None) -> None:
    del mesh
    check_release_plan(self.features, private, config)

  def abstract_state(self, config, num_classes: int):
    del num_classes
    sampler = training.as_sampler(self.sampler)
    params, model_state = jax.eval_shape(
        lambda key: sampler.init(key, config.train.latent_dim), jax.random.key(0))
    return training.TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params,
                               model_state=model_state, opt_state=())

  def release_arrays(self, config) -> dict[str, str]:
    return release_arrays(config)

  def private_statistic(self, private: ImageDataset, config, *, mesh=None,
                        quiet: bool = False) -> jax.Array:
    del config
    return private_embedding_sum(self.features, private, mesh=mesh, quiet=quiet)

  def release(self, statistic, private: ImageDataset, config, *,
              prior: PrivacyLedger | None = None, quiet: bool = False,
              show_private: bool = False):
    return release_embedding(self.features, private, statistic, config, prior=prior,
                             quiet=quiet, show_private=show_private)

  def post_process(self, release: dict[str, np.ndarray], num_classes: int, config, run, *,
                   mesh=None, quiet: bool = False):
    """Trains the sampler against the release, resuming from checkpoints.

    With a validation release, returns the checkpoint closest to it
    (selection.json records the choice), else the last state.
    """
    loss = training.embedding_loss(config.resolved_loss(), config.cosine_weight)
    primary = distributed.is_primary()  # the others write only their part of the checkpoints
    return training.train_to_match(self.features, self.sampler, release["embedding"],
                                   num_classes=num_classes,
                                   validation_matrix=release.get("validation_embedding"),
                                   selection_dir=run.file(SELECTION_CHECKPOINTS),
                                   selection_log=run.file(SELECTION) if primary else None,
                                   config=config.train, seed=config.seed, loss_fn=loss,
                                   checkpoint_dir=run.file(CHECKPOINTS),
                                   log_path=run.file(TRAIN_LOG) if primary else None,
                                   mesh=mesh, progress=not quiet)


def with_new_generator(features: FeatureMap, config, image_shape, num_classes: int
                       ) -> MeanEmbeddingRecipe:
  """The recipe with a freshly initialised conditional generator as the sampler."""
  generator = ConvCondGenerator(num_classes=num_classes, image_shape=tuple(image_shape),
                                hidden=config.train.generator_hidden,
                                channels=config.train.generator_channels)
  return MeanEmbeddingRecipe(features, training.GeneratorSampler(generator))
