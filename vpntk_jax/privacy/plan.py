"""The release protocol as a plan: what one mechanism releases, with which
sensitivity and noise, and the ledger records that describe it.

Built from plain values (no arrays, no JAX), so the run, `vpntk audit` and
anyone re-deriving a ledger compute the same sigma for the same settings.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import accounting, subsampled
from vpntk_jax.privacy.ledger import PrivacyLedger, ReleaseRecord
from vpntk_jax.privacy.noise import DP_SGD_STREAM, Lattice, generator, noise_rng
from vpntk_jax.privacy.release import (gaussian_release, release_record, release_statistic,
                                       released_count)


@dataclasses.dataclass(frozen=True)
class ReleasePlan:
  """Gaussian releases of one statistic, calibrated together for (epsilon, delta).

  `scales` maps each release's ledger name to its noise relative to the first
  (e.g. a validation copy 10x noisier); `sigmas` are their noise multipliers,
  calibrated for their composition; every release has noise std
  sensitivity * sigma.
  """
  epsilon: float
  delta: float
  accountant: str
  adjacency: str
  num_examples: int
  sensitivity: float
  sigmas: dict[str, float]
  noise_seed: int | None = None

  @classmethod
  def for_mean(cls, *, scales: dict[str, float], num_examples: int, norm_bound: float,
               epsilon: float, delta: float, accountant: str, adjacency: str,
               noise_seed: int | None = None) -> "ReleasePlan":
    """Releases of the mean of `num_examples` terms of norm <= `norm_bound`."""
    sensitivity = accounting.mean_embedding_sensitivity(num_examples, adjacency,
                                                        norm_bound=norm_bound)
    sigmas = accounting.calibrate_composition(epsilon, delta, list(scales.values()),
                                              accountant=accountant)
    return cls(epsilon=epsilon, delta=delta, accountant=accountant, adjacency=adjacency,
               num_examples=num_examples, sensitivity=sensitivity,
               sigmas=dict(zip(scales, sigmas)), noise_seed=noise_seed)

  def noise_std(self, name: str) -> float:
    """Noise std of release `name` before the lattice's (at most 1/1024) share."""
    return self.sensitivity * self.sigmas[name]

  def release(self, name: str, statistic, *, stream, notes: str,
              num_examples_source: str | None = None):
    """Release `name` of `statistic` (noise from `stream`): (noisy array, its record)."""
    return release_statistic(name, statistic, sensitivity=self.sensitivity,
                             sigma=self.sigmas[name], stream=stream, budget=self,
                             num_examples=self.num_examples, notes=notes,
                             num_examples_source=num_examples_source)

  def release_count(self, name: str, count: int, *, stream, notes: str,
                    num_examples_source: str | None = None):
    """Release `name` of a count (sensitivity 1): (noisy (1,) array, its record), which
    states the count the release stands for (`release.released_count`)."""
    noisy, lattice = gaussian_release(np.asarray([count], np.float64), sensitivity=1.0,
                                      sigma=self.sigmas[name], rng=generator(stream))
    return noisy, release_record(name, noisy, lattice, sigma=self.sigmas[name], budget=self,
                                 num_examples=released_count(noisy), notes=notes,
                                 num_examples_source=num_examples_source)

  def empty_ledger(self, prior: PrivacyLedger | None = None) -> PrivacyLedger:
    """A ledger for this budget that keeps charging every release of `prior` (a run
    this one replaces)."""
    return new_ledger(self, prior)


def new_ledger(plan, prior: PrivacyLedger | None = None) -> PrivacyLedger:
  """An empty ledger for `plan`'s budget (epsilon, delta, accountant, adjacency) that
  keeps charging every release of `prior` (a run this one replaces), as superseded."""
  ledger = PrivacyLedger(epsilon=plan.epsilon, delta=plan.delta, accountant=plan.accountant,
                         adjacency=plan.adjacency)
  for record in (prior.releases if prior is not None else ()):
    ledger = ledger.add(dataclasses.replace(
        record, status="superseded",
        notes=record.notes or "from the run this one replaced (--force); still charged"))
  return ledger


def check_fixed_releases(sigmas: dict[str, float], config, *, room_left: bool) -> None:
  """Refuses, before anything is drawn, Gaussian releases of fixed noise multipliers
  (name -> sigma, noise std / sensitivity) that together spend more than the budget,
  or all of it when `room_left` (calibrated parts must still fit beside them)."""
  parts = {name: accounting.epsilon_of([s], config.delta, accountant=config.accountant)
           for name, s in sigmas.items()}
  spent = accounting.epsilon_of(list(sigmas.values()), config.delta,
                                accountant=config.accountant)
  if spent > config.epsilon or (room_left and spent >= config.epsilon):
    listed = "; ".join(f"{name}: epsilon {eps:.4g}" for name, eps in parts.items())
    raise ConfigError(
        f"the budget epsilon {config.epsilon:g} (delta {config.delta:g}) cannot cover this "
        f"run: {listed}" + (f"; together {spent:.4g}" if len(parts) > 1 else "") +
        (", which leaves nothing for the DP-SGD steps" if room_left else "") +
        ". Raise the noise of these parts or the budget; nothing was released")


DP_SGD_MECHANISM = "dp_sgd"
DP_SGD_RELEASE_NAME = "dp_sgd_steps"


@dataclasses.dataclass(frozen=True)
class DpSgdPlan:
  """`steps` DP-SGD steps (Poisson rate `sampling_rate`, clip `clip_norm`), calibrated
  together with a run's plain Gaussian releases (`other_sigmas`) for (epsilon, delta).

  `noise_multiplier` is the house one (noise std / L2 sensitivity of the clipped
  sum, C or 2C): `subsampled.calibrate_noise_multiplier`'s answer. The run
  charges its steps chunk by chunk, each chunk's record written before the
  chunk runs (`chunk_record`); the ledger merges the chunks back into one event.
  """
  epsilon: float
  delta: float
  accountant: str
  adjacency: str
  num_examples: int
  sampling_rate: float
  steps: int
  clip_norm: float
  noise_multiplier: float
  other_sigmas: tuple[float, ...] = ()
  max_batch: int | None = None
  noise_seed: int | None = None

  @classmethod
  def calibrate(cls, *, epsilon: float, delta: float, accountant: str, adjacency: str,
                num_examples: int, expected_batch_size: float, steps: int, clip_norm: float,
                other_sigmas: tuple[float, ...] = (), max_batch: int | None = None,
                noise_seed: int | None = None) -> "DpSgdPlan":
    """The plan with the smallest noise multiplier that meets the budget. The sampling
    rate is expected_batch_size / num_examples (both public)."""
    q = subsampled.check_sampling_rate(float(expected_batch_size) / float(num_examples))
    sigma = _calibrated(float(epsilon), float(delta), q, int(steps), adjacency,
                        tuple(float(s) for s in other_sigmas), accountant, int(num_examples),
                        max_batch)
    return cls(epsilon=float(epsilon), delta=float(delta), accountant=accountant,
               adjacency=adjacency, num_examples=int(num_examples), sampling_rate=q,
               steps=int(steps), clip_norm=subsampled.check_clip_norm(clip_norm),
               noise_multiplier=sigma, other_sigmas=tuple(other_sigmas), max_batch=max_batch,
               noise_seed=noise_seed)

  @property
  def expected_batch_size(self) -> float:
    return self.sampling_rate * self.num_examples

  def event(self, steps: int):
    """The dp-accounting event of `steps` of these steps."""
    return subsampled.dp_sgd_event(self.noise_multiplier, self.sampling_rate, steps,
                                   adjacency=self.adjacency, num_examples=self.num_examples,
                                   max_batch=self.max_batch)

  def chunk_generators(self, start: int) -> tuple:
    """The Poisson batches' and the noise's generators of the chunk starting at step
    `start` (None noise seed: fresh OS entropy, so a resumed chunk draws anew)."""
    batches, noise = noise_rng(self.noise_seed, (DP_SGD_STREAM, start)).spawn(2)
    return generator(batches), generator(noise)

  def example_key(self):
    """The run's secret key of per-example randomness (`example_keys`)."""
    from vpntk_jax.privacy import example_keys  # pylint: disable=g-import-not-at-top  (JAX)
    return example_keys.run_key(self.noise_seed)

  def chunk_record(self, start: int, end: int, *, lattice: Lattice, num_params: int,
                   redone: bool) -> ReleaseRecord:
    """The record charging steps [start, end), to be written before they run.
    `redone`: a resumed run runs steps an earlier attempt already charged."""
    notes = (f"DP-SGD steps {start}..{end - 1} of {self.steps}: Poisson rate "
             f"{self.sampling_rate:.6g}, clip {self.clip_norm:g}, noise on a lattice of step "
             f"{lattice.granularity:.3g}")
    if redone:
      notes += ("; REDONE after a resume: an earlier attempt was charged for these steps "
                "too, and both stay charged")
    return ReleaseRecord.make(
        DP_SGD_RELEASE_NAME, sensitivity=lattice.effective_sensitivity * (
            2.0 if self.adjacency == "replace_one" else 1.0),
        sigma=self.noise_multiplier, adjacency=self.adjacency, accountant=self.accountant,
        epsilon=self.epsilon, delta=self.delta, num_private_examples=self.num_examples,
        noise_seed=self.noise_seed, shape=(num_params,), notes=notes,
        granularity=lattice.granularity, mechanism=DP_SGD_MECHANISM,
        dp_event=subsampled.event_to_json(self.event(end - start)),
        sampling_rate=self.sampling_rate, steps=end - start, clip_norm=self.clip_norm)


def charged_steps(ledger: PrivacyLedger) -> int:
  """DP-SGD steps the ledger's active records charge (redone ones included)."""
  return sum(r.steps or 0 for r in ledger.active_releases if r.mechanism == DP_SGD_MECHANISM)


@functools.lru_cache(maxsize=32)
def _calibrated(epsilon, delta, q, steps, adjacency, other_sigmas, accountant, num_examples,
                max_batch) -> float:
  # One calibration per setting per process: resuming and re-planning are free.
  return subsampled.calibrate_noise_multiplier(
      epsilon, delta, sampling_rate=q, steps=steps, adjacency=adjacency,
      other_sigmas=list(other_sigmas), accountant=accountant,
      num_examples=num_examples if max_batch is not None else None, max_batch=max_batch)
