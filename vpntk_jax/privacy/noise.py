"""Gaussian noise that floating point cannot give away: a Gaussian mechanism on a lattice.

A float32 statistic plus float32 Gaussian noise is not the Gaussian mechanism:
the sampler's outputs lie on a fixed finite set of values, so which outputs are
reachable depends on the exact statistic, and an adversary who knows every record
but one can test each coordinate for reachability and tell neighbouring datasets
apart with certainty (Mironov 2012 showed this for Laplace; `vpntk audit`'s
reachability test shows it for JAX's float32 normal sampler).

Here the release is computed on the integer lattice g * Z^d instead:
  1. s = round(x / g), with g a power of two no larger than
     sensitivity / (LATTICE_FACTOR * sqrt(d)); every coordinate is an integer.
     Between neighbours, ||s - s'||_2 <= sensitivity / g + sqrt(d) =: D
     (each coordinate's rounding moves it by at most 1/2), for any input.
  2. y = s + round(z), z ~ N(0, (sigma * D)^2) in float64. Since s is an integer,
     s + round(z) = round(s + z): the rounding of a Gaussian mechanism with
     L2 sensitivity D and noise multiplier sigma, i.e. post-processing of it. The
     accounting is that of the Gaussian mechanism with the same sigma; the
     sensitivity the ledger records is g * D = sensitivity + g * sqrt(d), at most
     1 + 1/LATTICE_FACTOR times the exact one.
  3. The release is g * y as float32: a fixed function of the integer output.

Every output is a lattice point, and every lattice point near the statistic is a
possible output from either neighbour, so the support no longer depends on the
data. What remains is the float64 sampler's deviation from an exact Gaussian at
the scale of one lattice cell (1 / (sigma * D) in standard-normal units, about
1e-7 for a 636,010 x 10 release); docs/method.md discusses it.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from vpntk_jax.errors import ConfigError, DataError

# The lattice is this many times finer than sensitivity / sqrt(d): the recorded
# sensitivity (and so the noise) grows by at most 1/LATTICE_FACTOR.
LATTICE_FACTOR = 1024
# |x / g| must stay where float64 holds integers exactly.
_MAX_LATTICE_INDEX = 2.0**52
_MAX_SEED = 2**32
# Streams of a run's noise seed besides the one-shot releases' children (0, 1, ...):
# the DP-SGD chunks (with the chunk's first step), DPAgg-TI's secret Poisson
# selection, and the secret key of the per-example randomness (`example_keys`).
DP_SGD_STREAM = 2**31
SELECTION_STREAM = 2**31 + 1
EXAMPLE_KEY_STREAM = 2**31 + 2


def noise_rng(seed: int | None, stream: tuple[int, ...] = ()) -> np.random.SeedSequence:
  """The seed sequence of a release's noise streams.

  `stream` names one of several independent sequences of the same seed (e.g. the
  DP-SGD steps starting at step s: (s,)); with a fixed seed the same stream
  comes back on every call.

  `None` draws 256 bits from OS entropy (the default for real releases: noise
  must not be reproducible from anything stored with the run). An int makes the
  noise reproducible, for tests and for experiments on public data only: anyone
  who knows it can remove the noise.
  """
  if seed is None:
    return np.random.SeedSequence(int.from_bytes(os.urandom(32), "little"), spawn_key=stream)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ConfigError(f"noise seed must be an integer or None, got {seed!r}")
  if not 0 <= int(seed) < _MAX_SEED:
    raise ConfigError(f"noise seed must be in [0, 2**32), got {seed!r}")
  return np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in stream))


def release_streams(seed: int | None, names) -> dict:
  """One independent stream per one-shot release of a run (its children 0, 1, ... in
  the order of `names`)."""
  names = list(names)
  return dict(zip(names, noise_rng(seed).spawn(len(names))))


def poisson_selection(seed: int | None, num_rows: int, rate: float) -> np.ndarray:
  """The rows a secret Poisson draw of rate `rate` includes (DPAgg-TI's subsample):
  each row independently, from the run's selection stream."""
  rng = generator(noise_rng(seed, (SELECTION_STREAM,)))
  return np.flatnonzero(rng.random(num_rows) < rate)


def generator(seeds: np.random.SeedSequence) -> np.random.Generator:
  return np.random.Generator(np.random.PCG64DXSM(seeds))


@dataclasses.dataclass(frozen=True)
class Lattice:
  """The lattice g * Z^d of a release of `size` coordinates with L2 sensitivity
  `sensitivity`, and the sensitivity of the rounded statistic on it."""
  granularity: float
  size: int
  sensitivity: float

  @classmethod
  def for_release(cls, sensitivity: float, size: int) -> "Lattice":
    if not (math.isfinite(sensitivity) and sensitivity > 0):
      raise ConfigError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
    if size < 1:
      raise ConfigError(f"a release needs at least one coordinate, got {size}")
    bound = sensitivity / (LATTICE_FACTOR * math.sqrt(size))
    return cls(granularity=2.0 ** math.floor(math.log2(bound)), size=int(size),
               sensitivity=float(sensitivity))

  @property
  def index_sensitivity(self) -> float:
    """An upper bound on ||round(x/g) - round(x'/g)||_2 over neighbours, rounded up."""
    # sensitivity / g is exact (g is a power of two); sqrt is rounded up by one ulp.
    return math.nextafter(self.sensitivity / self.granularity
                          + math.nextafter(math.sqrt(self.size), math.inf), math.inf)

  @property
  def effective_sensitivity(self) -> float:
    """The sensitivity of the release in its own units: what the ledger records."""
    return self.index_sensitivity * self.granularity

  def indices(self, statistic) -> np.ndarray:
    """round(x / g) as int64 (exact: g is a power of two)."""
    x = np.asarray(statistic, np.float64)
    if not np.all(np.isfinite(x)):
      raise DataError("the statistic to release contains NaN or inf; refusing to release it")
    scaled = x / self.granularity
    if x.size and float(np.max(np.abs(scaled))) >= _MAX_LATTICE_INDEX:
      raise DataError(f"the statistic reaches {float(np.max(np.abs(x))):.3g}, beyond what a "
                      f"lattice of step {self.granularity:.3g} holds exactly; its features "
                      f"are not bounded as the sensitivity assumes")
    return np.rint(scaled).astype(np.int64)

  def release(self, statistic, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """The noisy lattice point g * (round(x/g) + round(z)), z ~ N(0, (sigma * D)^2), as float32."""
    index = self.indices(statistic)
    z = rng.standard_normal(index.shape) * (float(sigma) * self.index_sensitivity)
    noisy = index + np.rint(z).astype(np.int64)
    return (noisy.astype(np.float64) * self.granularity).astype(np.float32)
