"""Calibration and accounting for Gaussian releases of mean embeddings.

Terminology: the *noise multiplier* `sigma` is noise std / L2 sensitivity, so every
function here works with sensitivity 1; adjacency enters only through the
sensitivity the caller computes (see `mean_embedding_sensitivity`).

Accountants (all for compositions of non-subsampled Gaussian releases):

* ``"analytic"``: exact privacy profile of one Gaussian mechanism (Balle & Wang 2018),
  via `dp_accounting.gaussian_mechanism`. Only for a single release.
* ``"pld"``: privacy loss distributions (`dp_accounting` PLD accountant), tight up to a
  pessimistic discretisation; handles compositions.
* ``"rdp"``: Renyi DP with the *classic* RDP->DP conversion
  eps = min_alpha [alpha / (2 sigma_eff^2) + log(1/delta) / (alpha - 1)]
  (Mironov 2017, Prop. 3) over continuous alpha. This is the calibration of the DP-MERF /
  DP-NTK reference code (autodp's `gaussian_mech`): it reproduces their sigmas
  (4.901 at eps 1, delta 1e-5). It is a valid but loose bound. Note that
  `dp_accounting.rdp.RdpAccountant` uses a tighter conversion (Canonne et al. 2020) and
  gives noticeably smaller sigmas (4.05 at eps 1), so it would not match the reference.

Every calibration returns a sigma whose epsilon, as evaluated by the same accountant,
is <= the target (never optimistic by root-finder tolerance), and no calibration
returns less noise than the exact bound.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Callable, Sequence

from dp_accounting import dp_event
from dp_accounting import gaussian_mechanism
from dp_accounting.pld import pld_privacy_accountant

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import calibration
from vpntk_jax.privacy.parameters import (ACCOUNTANTS, ADJACENCIES, _as_count, _as_float,
                                          _check_delta, check_accountant, check_adjacency,
                                          check_epsilon_delta)

# PLD loss-grid spacing per unit of epsilon. Discretisation is pessimistic, so a coarser
# grid only costs extra noise. Spacing proportional to epsilon keeps the relative epsilon
# error small (< 1e-7 measured for one release) at any epsilon and the grid size, hence
# runtime, roughly constant: the privacy-loss range scales with epsilon too.
PLD_DISCRETIZATION = 1e-4
# Below this epsilon the spacing stops shrinking (it would only grow the grid).
_PLD_MIN_EPSILON_SCALE = 1e-2
# Relative precision of the sigma search; the returned sigma is feasible and within
# this factor of the smallest feasible one for the chosen accountant.
_SIGMA_RTOL = 1e-7

_ACCOUNTANT_NOTES = {
    "pld": "tight numeric (privacy loss distributions)",
    "rdp": "Renyi DP, classic conversion (DP-MERF/DP-NTK reference)",
    "analytic": "exact analytic Gaussian (Balle & Wang 2018), one release",
}


def _check_sigmas(sigmas: Sequence[float]) -> list[float]:
  values = [_as_float(s, "noise multiplier") for s in sigmas]
  if not values:
    raise ConfigError("need at least one noise multiplier")
  for s in values:
    if math.isnan(s) or s < 0:
      raise ConfigError(f"noise multipliers must be >= 0, got {s!r}")
  return values


def _check_weights(weights: Sequence[float]) -> list[float]:
  values = [_as_float(w, "composition weight") for w in weights]
  if not values:
    raise ConfigError("calibrate_composition needs at least one weight")
  for w in values:
    if not (math.isfinite(w) and w > 0):
      raise ConfigError(f"composition weights must be finite and > 0, got {w!r}")
  return values


def _effective_sigma(sigmas: Sequence[float]) -> float:
  """The single-Gaussian noise multiplier equivalent to composing these ones.

  Composing Gaussian mechanisms with multipliers s_k is exactly one Gaussian mechanism
  with 1/s_eff^2 = sum_k 1/s_k^2 (Dong, Roth & Su 2019, Cor. 3.3); RDP adds the same way.
  """
  if any(s == 0 for s in sigmas):
    return 0.0
  inverse_square = sum(1.0 / s**2 for s in sigmas if math.isfinite(s))
  return math.inf if inverse_square == 0 else inverse_square**-0.5


def _rdp_epsilon(sigma_eff: float, delta: float) -> float:
  # alpha/(2 s^2) + L/(alpha-1) is minimised at alpha = 1 + sqrt(2L) s (always > 1).
  return 1.0 / (2.0 * sigma_eff**2) + math.sqrt(2.0 * math.log(1.0 / delta)) / sigma_eff


def _rdp_sigma(epsilon: float, delta: float) -> float:
  # Inverse of `_rdp_epsilon`: a quadratic in 1/sigma. Written as a ratio to avoid
  # cancellation between the two square roots when epsilon << log(1/delta).
  two_l = 2.0 * math.log(1.0 / delta)
  return (math.sqrt(two_l + 2.0 * epsilon) + math.sqrt(two_l)) / (2.0 * epsilon)


def _pld_epsilon(sigmas: Sequence[float], delta: float) -> float:
  # A run asks for the same epsilon several times (calibration, release, the
  # ledger's check, the report); each is a PLD computation.
  return _pld_epsilon_of_sorted(tuple(sorted(sigmas)), delta)


@functools.lru_cache(maxsize=4096)
def _pld_epsilon_of_sorted(sigmas: tuple[float, ...], delta: float) -> float:
  finite = [s for s in sigmas if math.isfinite(s)]
  if not finite:
    return 0.0
  # Equal multipliers become one self-composed event, which the accountant handles in
  # closed form instead of by repeated FFT convolution.
  events = [
      dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(s), n)
      for s, n in sorted(collections.Counter(finite).items())
  ]
  # Sensitivity is normalised to 1, so the neighbouring relation is the accountant's
  # plain add/remove one; replace-one is accounted for by the caller's sensitivity.
  # The exact epsilon only sets the grid scale; the PLD result does not depend on it
  # being right.
  scale = gaussian_mechanism.get_epsilon_gaussian(_effective_sigma(finite), delta)
  accountant = pld_privacy_accountant.PLDAccountant(
      value_discretization_interval=PLD_DISCRETIZATION * max(_PLD_MIN_EPSILON_SCALE, scale))
  accountant.compose(dp_event.ComposedDpEvent(events))
  return float(accountant.get_epsilon(delta))


def epsilon_of(sigmas: Sequence[float], delta: float, *, accountant: str = "pld") -> float:
  """Epsilon at `delta` of composing Gaussian releases with these noise multipliers.

  A multiplier of 0 (no noise) gives inf; inf (nothing released) contributes nothing.
  "analytic" accepts a single release only.
  """
  check_accountant(accountant)
  delta = _check_delta(delta)
  values = _check_sigmas(sigmas)
  if accountant == "analytic" and len(values) != 1:
    raise ConfigError(
        f"the analytic accountant covers a single release, got {len(values)}; use 'pld'")
  sigma_eff = _effective_sigma(values)
  if sigma_eff == 0:
    return math.inf
  if math.isinf(sigma_eff):
    return 0.0
  if accountant == "analytic":
    return float(gaussian_mechanism.get_epsilon_gaussian(values[0], delta))
  if accountant == "rdp":
    return _rdp_epsilon(sigma_eff, delta)
  return _pld_epsilon(values, delta)


def _smallest_feasible(eps_fn: Callable[[float], float], epsilon: float, start: float) -> float:
  """Smallest x >= start (to `_SIGMA_RTOL`) with eps_fn(x) <= epsilon; `start` is the
  exact optimum or an accountant's closed form, so the search only steps upwards."""
  return calibration.smallest_feasible_from(
      eps_fn, epsilon, start, _SIGMA_RTOL,
      too_far=f"no noise multiplier reaches epsilon {epsilon:g} with this accountant; at a "
              f"tiny delta use the pld or analytic accountant, or a larger delta")


def _exact_sigma(epsilon: float, delta: float) -> float:
  """Smallest sigma of one Gaussian release, verified with the exact epsilon formula.

  `get_sigma_gaussian` stops within 1e-12 of the root on either side; stepping up until
  `get_epsilon_gaussian` agrees makes it a lower bound that is itself feasible.
  """
  def exact_epsilon(sigma: float) -> float:
    return float(gaussian_mechanism.get_epsilon_gaussian(sigma, delta))
  return _smallest_feasible(
      exact_epsilon, epsilon, float(gaussian_mechanism.get_sigma_gaussian(epsilon, delta)))


def calibrate_composition(
    epsilon: float, delta: float, weights: Sequence[float], *, accountant: str = "pld"
) -> list[float]:
  """Noise multipliers `base * weights[k]` with the smallest `base` for (epsilon, delta)-DP.

  For releases that share one budget, e.g. DP-MEPF's two moments plus a 10x noisier
  validation release: `calibrate_composition(eps, delta, [1, 1, 10])`.
  """
  check_epsilon_delta(epsilon, delta)
  check_accountant(accountant)
  weights = _check_weights(weights)
  epsilon, delta = float(epsilon), float(delta)
  if accountant == "analytic" and len(weights) != 1:
    raise ConfigError(
        f"the analytic accountant covers a single release, got {len(weights)}; use 'pld'")
  # base / scale is the effective multiplier of the whole composition (see
  # `_effective_sigma`), which gives each accountant's starting point in closed form.
  scale = math.sqrt(sum(w**-2 for w in weights))
  if accountant == "rdp":
    start = _rdp_sigma(epsilon, delta) * scale
  else:
    start = _exact_sigma(epsilon, delta) * scale

  def eps_of_base(base: float) -> float:
    return epsilon_of([base * w for w in weights], delta, accountant=accountant)

  base = _smallest_feasible(eps_of_base, epsilon, start)
  return [base * w for w in weights]


def calibrate_gaussian(
    epsilon: float, delta: float, *, accountant: str = "pld", num_releases: int = 1
) -> float:
  """Smallest noise multiplier making `num_releases` Gaussian releases (epsilon, delta)-DP."""
  num_releases = _as_count(num_releases, "num_releases")
  if accountant == "analytic" and num_releases != 1:
    raise ConfigError(
        f"the analytic accountant covers a single release, got num_releases={num_releases}; "
        "use 'pld'")
  return calibrate_composition(epsilon, delta, [1.0] * num_releases, accountant=accountant)[0]


def sigma_table(epsilon: float, delta: float, num_examples: int | None = None) -> dict:
  """Noise multiplier of one release at (epsilon, delta) under every accountant.

  sigma does not depend on the adjacency; the sensitivity does. With
  `num_examples` (m), the table also gives the noise std of a mean-embedding
  release per adjacency and accountant.
  """
  check_epsilon_delta(epsilon, delta)
  sigmas = {}
  for name in ACCOUNTANTS:
    try:
      sigmas[name] = calibrate_gaussian(epsilon, delta, accountant=name)
    except ConfigError:
      sigmas[name] = None  # this accountant cannot reach (epsilon, delta)
  table = {
      "epsilon": float(epsilon),
      "delta": float(delta),
      "sigma": sigmas,
      "sensitivity": {"replace_one": "2/m", "add_remove": "1/m (m public)"},
  }
  if num_examples is not None:
    table["num_examples"] = int(num_examples)
    table["noise_std"] = {
        adjacency: {name: sigma * mean_embedding_sensitivity(num_examples, adjacency)
                    for name, sigma in sigmas.items() if sigma is not None}
        for adjacency in ADJACENCIES}
  return table


def format_sigma_table(table: dict) -> str:
  """Human-readable rendering of `sigma_table`'s result, for `vpntk privacy`."""
  sigmas = table["sigma"]
  reference = sigmas.get("rdp")
  lines = [
      f"Gaussian noise multiplier (noise std / L2 sensitivity) for one release at "
      f"epsilon={table['epsilon']:g}, delta={table['delta']:g}",
      f"{'accountant':<10}  {'sigma':>10}  {'vs rdp':>7}  notes",
  ]
  for name, sigma in sigmas.items():
    if sigma is None:
      lines.append(f"{name:<10}  {'-':>10}  {'-':>7}  cannot reach this (epsilon, delta)")
      continue
    change = f"{100.0 * (sigma / reference - 1.0):+.1f}%" if reference else "-"
    lines.append(f"{name:<10}  {sigma:>10.4f}  {change:>7}  {_ACCOUNTANT_NOTES.get(name, '')}")
  lines.append("sigma is the same for every adjacency; the sensitivity of a mean embedding of m "
               "unit-norm features is 2/m (replace_one) or 1/m (add_remove, m public)")
  if "noise_std" in table:
    lines.append(f"noise std at m={table['num_examples']}:")
    for adjacency, stds in table["noise_std"].items():
      cells = "  ".join(f"{name} {std:.4g}" for name, std in stds.items())
      lines.append(f"  {adjacency:<12} {cells}")
  return "\n".join(lines)


def mean_embedding_sensitivity(
    num_examples: int, adjacency: str, *, norm_bound: float = 1.0
) -> float:
  """L2 sensitivity of a mean embedding (1/m) sum_i phi(x_i) with ||phi(x)|| <= norm_bound.

  * "replace_one": neighbours differ by replacing one example; m is unchanged, two
    terms of norm <= norm_bound differ, so the sensitivity is 2 * norm_bound / m.
  * "add_remove": neighbours differ by adding or removing one example, so their sizes
    differ and m must be a PUBLIC constant: a declared count (`public_num_examples`) or a
    count released with its own noise first. The sum changes by one term of norm <=
    norm_bound and is divided by that constant, so the sensitivity is norm_bound / m for
    neighbours of any size.
  """
  check_adjacency(adjacency)
  num_examples = _as_count(num_examples, "num_examples")
  bound = _as_float(norm_bound, "norm_bound")
  if not (math.isfinite(bound) and bound > 0):
    raise ConfigError(f"norm_bound must be finite and > 0, got {norm_bound!r}")
  factor = 2.0 if adjacency == "replace_one" else 1.0
  return factor * bound / num_examples
