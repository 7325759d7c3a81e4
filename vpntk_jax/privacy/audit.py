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

The test statistic projects the output on the direction in which the two
means differ (the most powerful test for Gaussian noise). The threshold is
chosen on the first half of the trials and the rates are counted on the
second half, so the choice does not bias the bound.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy.release import gaussian_release


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


def audit_gaussian_release(mean_without: np.ndarray, mean_with: np.ndarray, *,
                           sensitivity: float, sigma: float, delta: float, trials: int,
                           key: jax.Array, confidence: float = 0.95) -> dict:
  """Runs `gaussian_release` `trials` times per world and bounds epsilon from below.

  Args:
    mean_without, mean_with: the exact (noise-free) statistic on the two
      neighbouring datasets, computed by the pipeline's own feature code.
    sensitivity, sigma: what the release is calibrated with. sigma 0 = no noise.
  """
  if trials < 20:
    raise ConfigError(f"an audit needs at least 20 trials per world, got {trials}")
  a = jnp.asarray(mean_without, jnp.float32)
  b = jnp.asarray(mean_with, jnp.float32)
  direction = b - a
  gap = float(jnp.linalg.norm(direction))
  if gap == 0.0:
    raise ConfigError("the canary does not change the statistic: nothing to audit")
  direction = direction / gap

  project = jax.jit(lambda noisy: jnp.vdot(noisy - a, direction))

  def statistic(mean, k):
    # The release itself runs exactly as in a real run (not traced or fused).
    noisy = gaussian_release(mean, sensitivity=sensitivity, sigma=sigma, key=k) \
        if sigma > 0 else mean
    return project(noisy)

  keys = jax.random.split(key, 2 * trials)
  s_without = np.array([float(statistic(a, k)) for k in keys[:trials]])
  s_with = np.array([float(statistic(b, k)) for k in keys[trials:]])
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
