"""Empirical privacy audit of the embedding release: a lower bound on epsilon.

Two neighbouring datasets differ in one example (replace-one: example 0 is
swapped for a canary). The real release code runs many times on each; a test
tries to tell from the noisy output which dataset was used. Its false positive
and false negative rates, with Clopper-Pearson upper confidence bounds, give
a statistically valid lower bound on epsilon:

    eps_lb = max(log((1 - delta - FNR_ub) / FPR_ub), log((1 - delta - FPR_ub) / FNR_ub))

(Kairouz et al. 2015; Jagielski et al. 2020). The bound must stay below the
claimed epsilon; with the noise switched off it must exceed it, otherwise the
audit could not see anything and would prove nothing.

Two tests:
  * projection: the output projected on the direction in which the two means
    differ (the most powerful test for ideal Gaussian noise). The threshold is
    chosen on the first half of the trials and the rates are counted on the
    second half, so the choice does not bias the bound.
  * floating-point reachability: "could this output have come from the first
    dataset's exact statistic at all?", coordinate by coordinate, given the
    sampler's finite set of outputs. It never errs on the first dataset; any
    unreachable coordinate proves the second. It breaks a float32 statistic plus
    float32 noise (`float32_gaussian_release`, kept here as the attack's target)
    and must find nothing against the lattice sampler runs use (`noise.Lattice`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy.noise import Lattice, generator, noise_rng
from vpntk_jax.privacy.release import gaussian_release

SAMPLERS = ("lattice", "float32")


def trial_seeds(seed: int | None) -> tuple[np.random.SeedSequence, np.random.SeedSequence]:
  """The projection and reachability tests' seed sequences (None: OS entropy)."""
  first, second = noise_rng(seed).spawn(2)
  return first, second


def clopper_pearson_upper(failures: int, trials: int, confidence: float) -> float:
  """One-sided upper confidence bound on a binomial rate."""
  if failures >= trials:
    return 1.0
  return float(stats.beta.ppf(confidence, failures + 1, trials - failures))


def epsilon_lower_bound(fpr_ub: float, fnr_ub: float, delta: float) -> float:
  candidates = []
  for a, b in ((fnr_ub, fpr_ub), (fpr_ub, fnr_ub)):
    numerator = 1.0 - delta - a
    if numerator > 0 and b > 0:
      candidates.append(math.log(numerator / b))
  return max([0.0] + candidates)


def _check_worlds(mean_without, mean_with, trials: int) -> float:
  if trials < 20:
    raise ConfigError(f"an audit needs at least 20 trials per world, got {trials}")
  gap = float(np.linalg.norm(np.asarray(mean_with, np.float64)
                             - np.asarray(mean_without, np.float64)))
  if gap == 0.0:
    raise ConfigError("the canary does not change the statistic: nothing to audit")
  return gap


def audit_gaussian_release(mean_without: np.ndarray, mean_with: np.ndarray, *,
                           sensitivity: float, sigma: float, delta: float, trials: int,
                           seeds: np.random.SeedSequence, confidence: float = 0.95) -> dict:
  """Runs `gaussian_release` `trials` times per world and bounds epsilon from below.

  Args:
    mean_without, mean_with: the exact (noise-free) statistic on the two
      neighbouring datasets, computed by the pipeline's own feature code.
    sensitivity, sigma: what the release is calibrated with. sigma 0 = no noise.
  """
  gap = _check_worlds(mean_without, mean_with, trials)
  a = np.asarray(mean_without, np.float64)
  b = np.asarray(mean_with, np.float64)
  direction = (b - a) / gap

  def statistic(mean, stream):
    # The release itself runs exactly as in a real run.
    noisy = (gaussian_release(mean, sensitivity=sensitivity, sigma=sigma,
                              rng=generator(stream))[0] if sigma > 0 else mean)
    return float(np.vdot(np.asarray(noisy, np.float64) - a, direction))

  streams = seeds.spawn(2 * trials)
  s_without = np.array([statistic(a, s) for s in streams[:trials]])
  s_with = np.array([statistic(b, s) for s in streams[trials:]])
  half = trials // 2
  # Threshold on the first half: the midpoint of the two sample means (the
  # likelihood-ratio threshold for equal-variance Gaussians).
  threshold = 0.5 * (s_without[:half].mean() + s_with[:half].mean())
  test_without, test_with = s_without[half:], s_with[half:]
  false_pos = int(np.sum(test_without > threshold))
  false_neg = int(np.sum(test_with <= threshold))
  fpr_ub = clopper_pearson_upper(false_pos, len(test_without), confidence)
  fnr_ub = clopper_pearson_upper(false_neg, len(test_with), confidence)
  return {
      "epsilon_lower_bound": epsilon_lower_bound(fpr_ub, fnr_ub, delta),
      "confidence": confidence, "trials_per_world": trials,
      "false_positives": false_pos, "false_negatives": false_neg,
      "evaluated_per_world": len(test_without),
      "fpr_upper": fpr_ub, "fnr_upper": fnr_ub,
      "statistic_gap": gap, "noise_std": sensitivity * sigma, "sigma": sigma,
  }


# ---------------------------------------------------------------------------
# The floating-point reachability test.

# jax.random.normal(float32) maps a 23-bit uniform u in [lo, 1) to sqrt(2) * erfinv(u).
_LO = np.nextafter(np.float32(-1.0), np.float32(0.0))
_HI = np.float32(1.0)
_MANTISSA = 2**23


def float32_gaussian_release(statistic, std: float, key: jax.Array) -> np.ndarray:
  """statistic + N(0, std^2) in float32 with JAX's normal sampler: how releases were
  made before the lattice sampler, kept as the reachability test's target."""
  x = jnp.asarray(statistic, jnp.float32)
  return np.asarray(x + jax.random.normal(key, x.shape, jnp.float32) * jnp.float32(std))


def _float32_normals(k: np.ndarray) -> np.ndarray:
  """JAX's float32 normal sample for 23-bit uniform draws k."""
  f = k.astype(np.float32) * np.float32(1.0 / _MANTISSA)
  u = np.maximum(_LO, f * (_HI - _LO) + _LO).astype(np.float32)
  return np.asarray(jnp.float32(math.sqrt(2.0)) * jax.lax.erf_inv(jnp.asarray(u)))


def float32_reachable(statistic, output, std: float) -> np.ndarray:
  """Per coordinate: can `float32_gaussian_release(statistic, std)` output `output`?"""
  x = np.asarray(statistic, np.float32)
  y = np.asarray(output, np.float32)
  std = np.float32(std)
  n = (y.astype(np.float64) - x) / float(std)
  u = np.asarray(jax.scipy.special.erf(jnp.asarray(n / math.sqrt(2.0), jnp.float32)),
                 np.float64)
  nearest = np.rint((u - float(_LO)) / (float(_HI) - float(_LO)) * _MANTISSA)
  reachable = np.zeros(x.shape, bool)
  # erf is not exact either: the draws that could explain y lie a few steps around.
  for step in range(-4, 5):
    k = np.clip(nearest + step, 0, _MANTISSA - 1)
    reachable |= (x + _float32_normals(k) * std) == y
  return reachable


def lattice_reachable(statistic, output, lattice: Lattice, sigma: float) -> np.ndarray:
  """Per coordinate: can `Lattice.release(statistic, sigma)` output `output`? Every
  lattice point whose index is within 40 noise stds of round(x / g) can."""
  y = np.asarray(output, np.float32)
  index = np.rint(y.astype(np.float64) / lattice.granularity)
  on_lattice = (index * lattice.granularity).astype(np.float32) == y
  offset = np.abs(index - lattice.indices(statistic))
  return on_lattice & (offset <= 40.0 * sigma * lattice.index_sensitivity)


def reachability_audit(mean_without: np.ndarray, mean_with: np.ndarray, *, sampler: str,
                       sensitivity: float, sigma: float, delta: float, trials: int,
                       seeds: np.random.SeedSequence, confidence: float = 0.95) -> dict:
  """Releases each world's statistic `trials` times with `sampler` ("lattice": what
  runs use; "float32": the float32 sampler) and decides "second world" whenever some
  coordinate is unreachable from the first world's exact statistic."""
  if sampler not in SAMPLERS:
    raise ConfigError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
  if not sigma > 0:
    raise ConfigError("the reachability test needs noise (sigma > 0)")
  _check_worlds(mean_without, mean_with, trials)
  streams = seeds.spawn(2 * trials)
  if sampler == "lattice":
    def reachable_share(mean, stream):
      noisy, lattice = gaussian_release(mean, sensitivity=sensitivity, sigma=sigma,
                                        rng=generator(stream))
      return float(np.mean(lattice_reachable(mean_without, noisy, lattice, sigma)))
  else:
    std = sensitivity * sigma

    def reachable_share(mean, stream):
      key = jax.random.key(int(stream.generate_state(1)[0]))
      noisy = float32_gaussian_release(mean, std, key)
      return float(np.mean(float32_reachable(mean_without, noisy, std)))

  without = np.array([reachable_share(mean_without, s) for s in streams[:trials]])
  with_canary = np.array([reachable_share(mean_with, s) for s in streams[trials:]])
  # "Second world" iff some coordinate is unreachable from the first.
  false_pos = int(np.sum(without < 1.0))
  false_neg = int(np.sum(with_canary == 1.0))
  fpr_ub = clopper_pearson_upper(false_pos, trials, confidence)
  fnr_ub = clopper_pearson_upper(false_neg, trials, confidence)
  return {
      "sampler": sampler,
      "epsilon_lower_bound": epsilon_lower_bound(fpr_ub, fnr_ub, delta),
      "confidence": confidence, "trials_per_world": trials,
      "false_positives": false_pos, "false_negatives": false_neg,
      "reachable_share_first_world": float(without.mean()),
      "reachable_share_second_world": float(with_canary.mean()),
  }
