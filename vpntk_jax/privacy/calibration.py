"""The one noise search: the smallest noise multiplier whose epsilon meets a budget.

Every calibration (a single Gaussian release, a composition of releases, a
DP-SGD run composed with releases) asks the same question of a decreasing
function `eps(sigma)`: the smallest sigma, to a relative tolerance, with
`eps(sigma) <= epsilon`. The answer is always a value that `eps` itself
accepted, so rounding in the search can only add noise, never remove it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from vpntk_jax.errors import ConfigError

SEARCH_RANGE = (1e-3, 1e6)

Epsilon = Callable[[float], float]


def bracket(feasible: Callable[[float], bool], start: float) -> tuple[float, float]:
  """(lo, hi) with feasible(hi) and not feasible(lo), hi / lo <= 2, halving or doubling
  from `start`."""
  low_bound, high_bound = SEARCH_RANGE
  lo = hi = start
  if feasible(hi):
    while True:
      lo = hi / 2.0
      if lo < low_bound:
        raise ConfigError(f"the budget is met with a noise multiplier below {low_bound:g}: "
                          f"check sampling_rate and steps")
      if not feasible(lo):
        return lo, hi
      hi = lo
  while True:
    lo, hi = hi, hi * 2.0
    if hi > high_bound:
      raise ConfigError(f"no noise multiplier up to {high_bound:g} meets the budget")
    if feasible(hi):
      return lo, hi


def bracket_below(eps: Epsilon, epsilon: float, hi: float) -> tuple[float, float]:
  """(lo, hi) below a feasible hi, in steps growing from 1% (a close first guess, such
  as a coarser grid's answer, is usually within a fraction of a percent)."""
  step = 1e-2
  while True:
    lo = hi * (1.0 - step)
    if lo < SEARCH_RANGE[0]:
      raise ConfigError(f"the budget is met with a noise multiplier below "
                        f"{SEARCH_RANGE[0]:g}: check sampling_rate and steps")
    if eps(lo) > epsilon:
      return lo, hi
    hi, step = lo, min(0.5, 4.0 * step)


def bracket_above(eps: Epsilon, epsilon: float, start: float, *,
                  too_far: str) -> tuple[float, float]:
  """(lo, hi) above an infeasible `start` that is a lower bound (an exact optimum or a
  closed form an accountant is at most slightly looser than): tiny steps first."""
  lower, step = start, 1e-9
  upper = start * (1.0 + step)
  while eps(upper) > epsilon:
    if step > 1e3:
      raise ConfigError(f"{too_far} (searched up to {upper:.4g})")
    lower, step = upper, step * 8.0
    upper = start * (1.0 + step)
  return lower, upper


def smallest_feasible(eps: Epsilon, epsilon: float, lo: float, hi: float,
                      rtol: float) -> float:
  """Shrinks (lo, hi), eps(lo) > epsilon >= eps(hi), to hi / lo - 1 <= rtol; returns hi.

  Illinois regula falsi on log epsilon against log sigma (nearly linear); after
  each step a probe just across the nearer end (0.9 rtol away) usually closes
  the bracket at once.
  """
  tol = math.log1p(rtol)
  a, b = math.log(lo), math.log(hi)
  # A grid can round a tiny epsilon to 0; the floor keeps the log finite (and such
  # a sigma feasible).
  f = lambda x: math.log(max(eps(math.exp(x)), 1e-300) / epsilon)
  fa, fb = f(a), f(b)
  side = 0
  while b - a > tol:
    width = b - a
    c = b - fb * (b - a) / (fb - fa) if fa != fb else 0.5 * (a + b)
    margin = min(0.5 * width, 0.25 * tol)
    c = min(max(c, a + margin), b - margin)
    fc = f(c)
    if fc <= 0:
      b, fb = c, fc
      if side == 1:
        fa *= 0.5
      side = 1
    else:
      a, fa = c, fc
      if side == -1:
        fb *= 0.5
      side = -1
    if b - a <= tol:
      break
    probe = b - 0.9 * tol if fc <= 0 else a + 0.9 * tol
    fp = f(probe)
    if fp <= 0:
      b, fb = probe, fp
    else:
      a, fa = probe, fp
  return math.exp(b)


def smallest_feasible_from(eps: Epsilon, epsilon: float, start: float, rtol: float, *,
                           too_far: str) -> float:
  """Smallest sigma >= `start` (a lower bound) with eps(sigma) <= epsilon, to `rtol`:
  it never returns less noise than the bound."""
  if eps(start) <= epsilon:
    return start
  lo, hi = bracket_above(eps, epsilon, start, too_far=too_far)
  return smallest_feasible(eps, epsilon, lo, hi, rtol)
