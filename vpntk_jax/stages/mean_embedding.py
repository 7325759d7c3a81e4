"""The one-release family (DP-NTK, DP-MERF, DP-MEPF, VP-NTK): the labelled mean
embedding of the private set, released once with the Gaussian mechanism, then a
sampler trained to match it (post-processing, any number of steps)."""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from vpntk_jax import distributed
from vpntk_jax import training
from vpntk_jax.data import ImageDataset
from vpntk_jax.features import FeatureMap, ntk
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.privacy import PrivacyLedger
from vpntk_jax.privacy.plan import ReleasePlan
from vpntk_jax.privacy.noise import generator, noise_rng
from vpntk_jax.privacy.release import array_digest, gaussian_release
from vpntk_jax.run_files import CHECKPOINTS, SELECTION, SELECTION_CHECKPOINTS, TRAIN_LOG

RELEASE_NAME = "labelled_mean_embedding"
VALIDATION_RELEASE_NAME = "validation_embedding"
# Ledger name -> array name in release.npz.
RELEASE_ARRAYS = {RELEASE_NAME: "embedding", VALIDATION_RELEASE_NAME: "validation_embedding"}


def _say(msg: str, quiet: bool) -> None:
  if not quiet:
    print(msg, file=sys.stderr, flush=True)


def ntk_network(config) -> ntk.NTKNetwork:
  return ntk.NTKNetwork(tuple(config.ntk_layers), config.ntk_init)


def release_scales(config) -> dict[str, float]:
  """Ledger name -> noise relative to the main release, for this config's releases."""
  scales = {RELEASE_NAME: 1.0}
  if config.validation_noise_scale is not None:
    scales[VALIDATION_RELEASE_NAME] = float(config.validation_noise_scale)
  return scales


def release_plan(config, num_examples: int, norm_bound: float) -> ReleasePlan:
  """The plan the run releases with, and that `vpntk audit` audits."""
  return ReleasePlan.for_mean(scales=release_scales(config), num_examples=num_examples,
                              norm_bound=norm_bound, epsilon=config.epsilon,
                              delta=config.delta, accountant=config.accountant,
                              adjacency=config.adjacency, noise_seed=config.noise_seed)


def private_mean_embedding(features: FeatureMap, private: ImageDataset, *, mesh=None,
                           quiet: bool = False) -> jax.Array:
  """The exact (P, C) labelled mean embedding of the private set. Never stored.

  In a multi-host job every process takes part (each sums its share).
  """
  m = len(private.labels)
  bar = tqdm(total=m, desc="private embedding", disable=quiet, dynamic_ncols=True)
  done = [0]

  def progress(n):
    bar.update(n - done[0])
    done[0] = n

  total = features.private_sum(private.images, private.labels, private.num_classes,
                               progress=progress, mesh=mesh)
  bar.close()
  return ntk.embedding_to_matrix(total) / m


def release_embedding(features: FeatureMap, private: ImageDataset, mean: jax.Array, config, *,
                      prior: PrivacyLedger | None = None, quiet: bool = False
                      ) -> tuple[dict[str, np.ndarray], PrivacyLedger]:
  """Releases `mean`, the `private_mean_embedding`, once (Gaussian mechanism).

  Returns the release.npz arrays, {"embedding": noisy (P, C) matrix} plus
  "validation_embedding" (a second, noisier release of the same mean) when
  `config.validation_noise_scale` is set, and the ledger with them added. With
  a validation release the noise of both is calibrated for their composition.
  """
  plan = release_plan(config, len(private.labels), features.norm_bound)
  t0 = time.perf_counter()
  for warning in release_warnings(np.asarray(mean), private, config,
                                  plan.noise_std(RELEASE_NAME)):
    _say(f"WARNING: {warning}", quiet=False)
  ledger = plan.empty_ledger(prior)
  scales = release_scales(config)
  # One independent noise stream per release.
  streams = noise_rng(config.noise_seed).spawn(len(plan.sigmas))
  # In float64 on the host: the lattice rounding needs it, and it is one pass.
  exact = np.asarray(mean, np.float64)
  arrays = {}
  for stream, (name, sigma) in zip(streams, plan.sigmas.items()):
    noisy, lattice = gaussian_release(exact, sensitivity=plan.sensitivity, sigma=sigma,
                                      rng=generator(stream))
    arrays[RELEASE_ARRAYS[name]] = noisy
    purpose = ("training target" if name == RELEASE_NAME else
               "model selection only (noise x{:g})".format(scales[name]))
    ledger = ledger.add(plan.record(
        name, shape=mean.shape, sha256=array_digest(noisy), lattice=lattice,
        notes=f"{config.method} features; per-example norm <= {features.norm_bound}; "
              f"{purpose}; noise on a lattice of step {lattice.granularity:.3g}"))
  # What the ledger records: the lattice's sensitivity and the noise drawn with it.
  _say(f"released the embedding ({mean.shape[0]:,} x {mean.shape[1]}) in "
       f"{time.perf_counter() - t0:.1f} s: " +
       ", ".join(f"{r.name} sensitivity {r.sensitivity:.3g}, sigma {r.sigma:.4g} "
                 f"(noise std {r.noise_std:.3g})" for r in ledger.active_releases), quiet)
  return arrays, ledger


def release_warnings(mean: np.ndarray, private: ImageDataset, config,
                     noise_std: float) -> list[str]:
  """Conditions under which the release is valid but likely useless or weak."""
  warnings = []
  m = len(private.labels)
  if config.delta >= 1.0 / m:
    warnings.append(f"delta {config.delta:g} >= 1/m = {1 / m:.3g}: a mechanism that publishes "
                    f"one random example outright would meet this delta; choose delta << 1/m")
  empty = [c for c, n in enumerate(private.class_counts()) if n == 0]
  if empty:
    warnings.append(f"classes {empty} have no private examples; their columns are pure noise")
  # Signal-to-noise ratio of the whole release (Frobenius norms). The norm of
  # the exact mean is not released, only printed to the operator.
  snr = float(np.linalg.norm(mean)) / (noise_std * math.sqrt(mean.size))
  if snr < 0.1:
    warnings.append(f"the noise swamps the embedding (signal-to-noise {snr:.3g}); expect poor "
                    f"synthetic data: use more private examples or a larger epsilon")
  return warnings


@dataclasses.dataclass(frozen=True, eq=False)
class MeanEmbeddingRecipe:
  """One private mechanism (the labelled mean of `features`, released once) and one
  post-processing stage (`sampler` trained to match the release).

  The run orchestrator asks a recipe for its private statistic (every process
  of a multi-host job computes its share), its release (noise and ledger, once,
  on the primary process), and its post-processing; any recipe with these
  methods runs the same way.
  """
  features: FeatureMap
  sampler: Any

  def release_arrays(self, config) -> dict[str, str]:
    """Ledger name -> release.npz array name of what this config releases."""
    return {name: RELEASE_ARRAYS[name] for name in release_scales(config)}

  def private_statistic(self, private: ImageDataset, config, *, mesh=None,
                        quiet: bool = False) -> jax.Array:
    del config
    return private_mean_embedding(self.features, private, mesh=mesh, quiet=quiet)

  def release(self, statistic, private: ImageDataset, config, *,
              prior: PrivacyLedger | None = None, quiet: bool = False):
    return release_embedding(self.features, private, statistic, config, prior=prior,
                             quiet=quiet)

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
