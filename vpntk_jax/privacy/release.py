"""The Gaussian mechanism applied to a statistic (e.g. a mean embedding), and the
fingerprint a ledger keeps of what it released."""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy.ledger import ReleaseRecord
from vpntk_jax.privacy.noise import Lattice, generator, noise_rng  # noqa: F401  (re-exported)


def gaussian_release(statistic, *, sensitivity: float, sigma: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, Lattice | None]:
  """The Gaussian mechanism on `statistic`, with noise multiplier `sigma` (from
  `accounting`), drawn on a lattice so floating point cannot give the input away
  (`noise.Lattice`). Returns the float32 release and its lattice, whose
  `effective_sensitivity` is what the ledger records.

  sigma == 0 returns the statistic unchanged with a warning (and no lattice):
  useful for non-private debugging, never a private release.
  """
  sensitivity = float(sensitivity)
  sigma = float(sigma)
  if not (math.isfinite(sensitivity) and sensitivity > 0):
    raise ConfigError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
  if not (math.isfinite(sigma) and sigma >= 0):
    raise ConfigError(f"noise multiplier sigma must be finite and >= 0, got {sigma!r}")
  statistic = np.asarray(statistic)
  # A NaN/inf statistic would come out NaN/inf whatever the noise: an upstream bug
  # (e.g. unbounded features) that must not be published silently.
  if not np.all(np.isfinite(statistic)):
    raise DataError("the statistic to release contains NaN or inf; refusing to release it")
  if sigma == 0:
    warnings.warn(
        "gaussian_release with sigma=0: the statistic is released WITHOUT noise and is "
        "NOT differentially private", UserWarning, stacklevel=2)
    return statistic.astype(np.float32), None
  lattice = Lattice.for_release(sensitivity, statistic.size)
  return lattice.release(statistic, sigma, rng), lattice


def release_statistic(name: str, statistic, *, sensitivity: float, sigma: float,
                      stream: np.random.SeedSequence, budget, num_examples: int, notes: str,
                      num_examples_source: str | None = None,
                      **mechanism) -> tuple[np.ndarray, ReleaseRecord]:
  """The Gaussian mechanism on `statistic` (lattice noise from `stream`) and the ledger
  record that describes it: the one way every one-shot release is made.

  `budget`: anything with epsilon, delta, accountant, adjacency and noise_seed (a
  run's config or a calibrated plan); `num_examples`: the public count the record
  states; `mechanism`: the record's fields for a release that is not a plain
  Gaussian (a subsampled one's dp_event, say).
  """
  noisy, lattice = gaussian_release(statistic, sensitivity=sensitivity, sigma=sigma,
                                    rng=generator(stream))
  return noisy, release_record(name, noisy, lattice, sigma=sigma, budget=budget,
                               num_examples=num_examples, notes=notes,
                               num_examples_source=num_examples_source, **mechanism)


def released_count(noisy: np.ndarray) -> int:
  """The public count a noisy count release stands for: rounded, at least 1."""
  return max(1, int(np.rint(float(np.asarray(noisy).ravel()[0]))))


def release_record(name: str, noisy: np.ndarray, lattice: Lattice, *, sigma: float, budget,
                   num_examples: int, notes: str, num_examples_source: str | None = None,
                   **mechanism) -> ReleaseRecord:
  """The ledger record of `noisy`, drawn on `lattice` with noise multiplier `sigma`
  (arguments as `release_statistic`). Its sensitivity is the lattice's, which the
  noise was scaled to."""
  return ReleaseRecord.make(
      name, sensitivity=lattice.effective_sensitivity, sigma=sigma,
      adjacency=budget.adjacency, accountant=budget.accountant, epsilon=budget.epsilon,
      delta=budget.delta, num_private_examples=num_examples, noise_seed=budget.noise_seed,
      shape=noisy.shape, sha256=array_digest(noisy), granularity=lattice.granularity,
      num_examples_source=num_examples_source,
      notes=f"{notes}; noise on a lattice of step {lattice.granularity:.3g}", **mechanism)


def array_digest(array: np.ndarray) -> str:
  """sha256 of an array's dtype, shape and bytes: the fingerprint a ledger keeps of a release."""
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()
