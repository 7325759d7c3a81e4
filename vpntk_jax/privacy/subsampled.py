"""Accounting for DP-SGD: T steps of the Poisson-subsampled Gaussian mechanism,
composed with the run's other Gaussian releases in one dp-accounting accountant.

Units. As everywhere in `privacy`, a *noise multiplier* `sigma` is noise std / L2
sensitivity of the un-subsampled statistic: for DP-SGD's sum of per-example
gradients clipped to norm C, the sensitivity is C (add_remove) or 2C
(replace_one), so the noise std is sigma * C or 2 * sigma * C. `other_sigmas`
are the same kind of number for plain (non-subsampled) Gaussian releases of the
same run, e.g. a histogram query.

dp-accounting's events use a different unit: its `GaussianDpEvent(z)` means noise
std z times the bound on ONE record's contribution, and its REPLACE_ONE relation
moves that record from one contribution to another (up to twice the bound). So
under replace_one the events carry z = 2 * sigma (`event_multiplier`), under
add_remove z = sigma. The events built here are in dp-accounting's units, so a
ledger that stores `event_to_json(event)` and the neighbouring relation lets
anyone re-derive epsilon with dp-accounting alone:

    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant as pld
    from dp_accounting.privacy_accountant import NeighboringRelation
    acc = pld.PLDAccountant(NeighboringRelation[record["neighboring_relation"]])
    acc.compose(dp_event.DpEvent.from_named_tuple(<record["dp_event"] as namedtuples>))
    acc.get_epsilon(record["delta"])

(`event_from_json` does the namedtuple step.)

Accountants:
* ``"pld"``: privacy loss distributions, both adjacencies; also truncated Poisson
  batches (`TruncatedSubsampledGaussianDpEvent`). The loss grid is
  PLD_DISCRETIZATION x epsilon wide (pessimistic: a coarser grid only
  overstates epsilon); measured relative error < 1e-4 at the PrivImage setting.
* ``"rdp"``: dp-accounting's RDP accountant (its own RDP->DP conversion, not
  `accounting`'s classic one). add_remove only: dp-accounting 0.6 has no RDP
  bound for Poisson sampling under replace_one, and none for truncated batches.
* ``"analytic"`` covers one non-subsampled release and is refused here.

PrivImage's setting (add_remove, delta 1.67e-6, q = 4096/55000, T = 2014):
`calibrate_noise_multiplier` gives 13.823 at epsilon 1 and 1.9325 at epsilon 10
with PLD (RESEARCH.md: 13.91 / 1.93; epsilon_of(13.91) = 0.993, epsilon_of(1.93)
= 10.017), 14.856 / 2.0305 with RDP (RESEARCH.md: 14.92 / 2.03). Under
replace_one (PLD): 13.765 / 1.775.
"""

from __future__ import annotations

import collections
import functools
import math
from collections.abc import Sequence
from typing import Any

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import rdp_privacy_accountant

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy import calibration
from vpntk_jax.privacy.parameters import (_as_count, _as_float, _check_delta, check_accountant,
                                          check_adjacency, check_epsilon_delta)

# PLD loss-grid spacing per unit of epsilon (as `accounting.PLD_DISCRETIZATION`).
PLD_DISCRETIZATION = 1e-4
# Below this epsilon the spacing stops shrinking (it would only grow the grid).
_PLD_MIN_EPSILON_SCALE = 1e-2
# The first, coarse pass that only finds the epsilon scale of the fine grid.
_PLD_COARSE_INTERVAL = 1e-2
# Relative precision of the noise multiplier search.
_SIGMA_RTOL = 1e-4

NEIGHBORING_RELATIONS = {
    "add_remove": NeighboringRelation.ADD_OR_REMOVE_ONE,
    "replace_one": NeighboringRelation.REPLACE_ONE,
}
# The only classes `event_from_json` will build (its input may come from any file).
_EVENT_CLASSES = frozenset({
    "GaussianDpEvent", "PoissonSampledDpEvent", "SelfComposedDpEvent", "ComposedDpEvent",
    "TruncatedSubsampledGaussianDpEvent", "NoOpDpEvent", "NonPrivateDpEvent",
})
_EVENT_MODULE = "dp_accounting.dp_event"


# --- checks -------------------------------------------------------------------------

def check_sampling_rate(sampling_rate: Any) -> float:
  """q in (0, 1], as float; ConfigError otherwise."""
  q = _as_float(sampling_rate, "sampling_rate")
  if not 0.0 < q <= 1.0:
    raise ConfigError(f"sampling_rate must be in (0, 1], got {sampling_rate!r}")
  return q


def check_steps(steps: Any) -> int:
  """An integer >= 1 (bools and floats refused); ConfigError otherwise."""
  return int(_as_count(steps, "steps"))


def check_count(value: Any, name: str) -> int:
  """An integer >= 1 named `name` in the error."""
  return int(_as_count(value, name))


def check_noise_multiplier(noise_multiplier: Any) -> float:
  """A finite noise multiplier > 0 (DP-SGD without noise is not private)."""
  sigma = _as_float(noise_multiplier, "noise_multiplier")
  if not (math.isfinite(sigma) and sigma > 0):
    raise ConfigError(f"noise_multiplier must be finite and > 0, got {noise_multiplier!r}")
  return sigma


def check_clip_norm(clip_norm: Any) -> float:
  """A clip norm in [1e-30, 1e30]: > 0, and inside float32's normal range with room for
  the clipping's rounding analysis (`privacy.dp_sgd`)."""
  c = _as_float(clip_norm, "clip_norm")
  if not (math.isfinite(c) and 1e-30 <= c <= 1e30):
    raise ConfigError(f"clip_norm must be finite, > 0 and in [1e-30, 1e30], got {clip_norm!r}")
  return c


def _check_other_sigmas(other_sigmas: Sequence[float]) -> list[float]:
  if isinstance(other_sigmas, (str, bytes)) or not isinstance(other_sigmas, Sequence):
    raise ConfigError(f"other_sigmas must be a list of noise multipliers, got {other_sigmas!r}")
  values = [_as_float(s, "other_sigmas entry") for s in other_sigmas]
  for s in values:
    if math.isnan(s) or s < 0:
      raise ConfigError(f"other_sigmas entries must be >= 0, got {s!r}")
  return values


def _check_truncation(num_examples: Any, max_batch: Any) -> tuple[int, int] | None:
  if max_batch is None:
    return None
  if num_examples is None:
    raise ConfigError("a max_batch (truncated Poisson batches) needs num_examples, the "
                      "dataset size the truncation accounting uses")
  return check_count(num_examples, "num_examples"), check_count(max_batch, "max_batch")


def event_multiplier(noise_multiplier: float, adjacency: str) -> float:
  """dp-accounting's multiplier (noise std / one record's contribution bound) for a
  house noise multiplier (noise std / L2 sensitivity): 2 * sigma under replace_one."""
  check_adjacency(adjacency)
  return (2.0 if adjacency == "replace_one" else 1.0) * float(noise_multiplier)


# --- events -------------------------------------------------------------------------

def dp_sgd_event(noise_multiplier: float, sampling_rate: float, steps: int, *,
                 adjacency: str, num_examples: int | None = None,
                 max_batch: int | None = None) -> dp_event.DpEvent:
  """The dp-accounting event of `steps` DP-SGD steps (in dp-accounting's units).

  Poisson batches: SelfComposed(PoissonSampled(q, Gaussian(z)), steps). With
  `max_batch` (batches cut to a uniformly random subset of max_batch when the
  Poisson draw is larger, `privacy.dp_sgd.poisson_batch`):
  SelfComposed(TruncatedSubsampledGaussian(num_examples, q, max_batch, z), steps),
  which accounts for the truncation (arXiv 2508.15089; PLD only).
  """
  sigma = check_noise_multiplier(noise_multiplier)
  q = check_sampling_rate(sampling_rate)
  steps = check_steps(steps)
  z = event_multiplier(sigma, adjacency)
  truncation = _check_truncation(num_examples, max_batch)
  if truncation is None:
    step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z))
  else:
    n, b = truncation
    step = dp_event.TruncatedSubsampledGaussianDpEvent(
        dataset_size=n, sampling_probability=q, truncated_batch_size=b, noise_multiplier=z)
  return dp_event.SelfComposedDpEvent(step, steps)


def gaussian_events(sigmas: Sequence[float], *, adjacency: str) -> list[dp_event.DpEvent]:
  """Plain Gaussian releases with house noise multipliers, as dp-accounting events.

  Equal multipliers are grouped into one self-composed event; inf (nothing
  released) is left out; 0 becomes a NonPrivateDpEvent (epsilon inf).
  """
  values = _check_other_sigmas(sigmas)
  events: list[dp_event.DpEvent] = []
  for s, count in sorted(collections.Counter(values).items()):
    if math.isinf(s):
      continue
    if s == 0:
      events.append(dp_event.NonPrivateDpEvent())
      continue
    g = dp_event.GaussianDpEvent(event_multiplier(s, adjacency))
    events.append(g if count == 1 else dp_event.SelfComposedDpEvent(g, count))
  return events


def run_event(noise_multiplier: float, *, sampling_rate: float, steps: int, adjacency: str,
              other_sigmas: Sequence[float] = (), num_examples: int | None = None,
              max_batch: int | None = None) -> dp_event.DpEvent:
  """The whole run's event: the DP-SGD steps composed with the other Gaussian releases."""
  sgd = dp_sgd_event(noise_multiplier, sampling_rate, steps, adjacency=adjacency,
                     num_examples=num_examples, max_batch=max_batch)
  others = gaussian_events(other_sigmas, adjacency=adjacency)
  return dp_event.ComposedDpEvent([sgd] + others) if others else sgd


# --- epsilon ------------------------------------------------------------------------

def _contains(event: dp_event.DpEvent, kind: type) -> bool:
  if isinstance(event, kind):
    return True
  if isinstance(event, dp_event.SelfComposedDpEvent):
    return _contains(event.event, kind)
  if isinstance(event, dp_event.ComposedDpEvent):
    return any(_contains(e, kind) for e in event.events)
  if isinstance(event, dp_event.PoissonSampledDpEvent):
    return _contains(event.event, kind)
  return False


def _pld_epsilon(event: dp_event.DpEvent, delta: float, relation: NeighboringRelation,
                 interval: float) -> float:
  # A run asks for the same epsilons several times (calibration, preflight,
  # release, the ledger's check, a resume), and one PLD of truncated Poisson
  # steps takes about a second. An event's repr names every field with floats
  # written exactly, so equal keys are equal events.
  key = (repr(event), delta, relation, interval)
  if key not in _PLD_EPSILONS:
    accountant = pld_privacy_accountant.PLDAccountant(
        relation, value_discretization_interval=interval)
    if not accountant.supports(event):
      raise ConfigError(f"dp-accounting's PLD accountant cannot account {event!r}")
    accountant.compose(event)
    if len(_PLD_EPSILONS) >= _PLD_CACHE_SIZE:
      _PLD_EPSILONS.pop(next(iter(_PLD_EPSILONS)))  # the oldest
    _PLD_EPSILONS[key] = float(accountant.get_epsilon(delta))
  return _PLD_EPSILONS[key]


_PLD_EPSILONS: dict[tuple, float] = {}
_PLD_CACHE_SIZE = 4096


def pld_interval(epsilon_scale: float, discretization: float = PLD_DISCRETIZATION) -> float:
  """The PLD grid spacing for an epsilon of about `epsilon_scale`."""
  scale = epsilon_scale if math.isfinite(epsilon_scale) else 1.0
  return discretization * max(_PLD_MIN_EPSILON_SCALE, scale)


def check_supported(event: dp_event.DpEvent, *, adjacency: str, accountant: str) -> None:
  """Raises ConfigError where `accountant` cannot account `event` under `adjacency`."""
  check_accountant(accountant)
  check_adjacency(adjacency)
  if accountant == "analytic":
    raise ConfigError("the analytic accountant covers one non-subsampled Gaussian release; "
                      "account DP-SGD with accountant 'pld' (or 'rdp' under add_remove)")
  if accountant == "rdp":
    if adjacency == "replace_one":
      # Besides having no bound for Poisson sampling under REPLACE_ONE, dp-accounting
      # 0.6's RDP accountant reads GaussianDpEvent(z) as sensitivity 1 under every
      # relation, while its PLD accountant (and these events) mean 2 under REPLACE_ONE.
      raise ConfigError("accountant 'rdp' cannot account DP-SGD under adjacency "
                        "'replace_one': dp-accounting 0.6 has no RDP bound for "
                        "Poisson-subsampled steps under replace-one; use accountant 'pld'")
    if _contains(event, dp_event.TruncatedSubsampledGaussianDpEvent):
      raise ConfigError("accountant 'rdp' cannot account truncated Poisson batches "
                        "(max_batch); use accountant 'pld', or max_batch=None")


def event_epsilon(event: dp_event.DpEvent, delta: float, *, adjacency: str,
                  accountant: str = "pld", discretization: float = PLD_DISCRETIZATION,
                  epsilon_scale: float | None = None) -> float:
  """Epsilon at `delta` of any dp-accounting event (e.g. one read back from a ledger).

  The PLD grid is `discretization` x epsilon wide; the epsilon scale comes from
  `epsilon_scale` or, if None, a coarse first pass (whose result is also an upper bound).
  """
  check_accountant(accountant)
  check_adjacency(adjacency)
  delta = _check_delta(delta)
  discretization = _as_float(discretization, "discretization")
  if not (math.isfinite(discretization) and 0 < discretization <= 1e-2):
    raise ConfigError(f"discretization must be in (0, 0.01], got {discretization!r}")
  relation = NEIGHBORING_RELATIONS[adjacency]
  check_supported(event, adjacency=adjacency, accountant=accountant)
  if _contains(event, dp_event.NonPrivateDpEvent):
    return math.inf
  if accountant == "rdp":
    rdp = rdp_privacy_accountant.RdpAccountant(neighboring_relation=relation)
    if not rdp.supports(event):
      raise ConfigError(f"dp-accounting's RDP accountant cannot account {event!r}")
    rdp.compose(event)
    return float(rdp.get_epsilon(delta))
  if epsilon_scale is None:
    epsilon_scale = _pld_epsilon(event, delta, relation, _PLD_COARSE_INTERVAL)
  return _pld_epsilon(event, delta, relation, pld_interval(epsilon_scale, discretization))


def epsilon_of(noise_multiplier: float, delta: float, *, sampling_rate: float, steps: int,
               adjacency: str, other_sigmas: Sequence[float] = (), accountant: str = "pld",
               num_examples: int | None = None, max_batch: int | None = None,
               discretization: float = PLD_DISCRETIZATION) -> float:
  """Epsilon at `delta` of `steps` DP-SGD steps (house noise multiplier, sampling rate q)
  composed with plain Gaussian releases `other_sigmas`, in one accountant."""
  event = run_event(noise_multiplier, sampling_rate=sampling_rate, steps=steps,
                    adjacency=adjacency, other_sigmas=other_sigmas,
                    num_examples=num_examples, max_batch=max_batch)
  return event_epsilon(event, delta, adjacency=adjacency, accountant=accountant,
                       discretization=discretization)


def calibrate_noise_multiplier(
    epsilon: float, delta: float, *, sampling_rate: float, steps: int, adjacency: str,
    other_sigmas: Sequence[float] = (), accountant: str = "pld",
    num_examples: int | None = None, max_batch: int | None = None,
    discretization: float = PLD_DISCRETIZATION, rtol: float = _SIGMA_RTOL) -> float:
  """The smallest DP-SGD noise multiplier (to relative `rtol`) whose run, composed with
  `other_sigmas`, is (epsilon, delta)-DP.

  A root search in log sigma, first on a 10x coarser PLD grid (cheap; its
  answer is feasible on the fine one, being pessimistic), then on the grid sized
  for the target epsilon; the result is checked with `epsilon_of` itself (and
  stepped up until that passes), so `epsilon_of(result, ...) <= epsilon` holds.
  """
  check_epsilon_delta(epsilon, delta)
  epsilon, delta = float(epsilon), float(delta)
  rtol = _as_float(rtol, "rtol")
  if not 0 < rtol <= 0.1:
    raise ConfigError(f"rtol must be in (0, 0.1], got {rtol!r}")
  common = dict(sampling_rate=sampling_rate, steps=steps, adjacency=adjacency,
                other_sigmas=other_sigmas, num_examples=num_examples, max_batch=max_batch)
  coarse = min(_PLD_COARSE_INTERVAL, 10.0 * _as_float(discretization, "discretization"))

  def eps_fn(grid: float, scale: float | None):
    @functools.lru_cache(maxsize=None)
    def eps(sigma: float) -> float:
      return event_epsilon(run_event(sigma, **common), delta, adjacency=adjacency,
                           accountant=accountant, discretization=grid, epsilon_scale=scale)
    return eps

  # Validates everything once, and rejects budgets the other releases alone exceed.
  check_supported(run_event(1.0, **common), adjacency=adjacency, accountant=accountant)
  others = gaussian_events(other_sigmas, adjacency=adjacency)
  if others:
    spent = event_epsilon(dp_event.ComposedDpEvent(others), delta, adjacency=adjacency,
                          accountant=accountant, discretization=discretization,
                          epsilon_scale=epsilon)
    if spent >= epsilon:
      raise ConfigError(f"the other releases (other_sigmas) alone spend epsilon {spent:.4g} "
                        f">= the budget {epsilon:g}; no DP-SGD noise can fit")
  fine = eps_fn(discretization, epsilon)
  if accountant == "pld":
    # Far from the target a grid sized for it would be needlessly fine (slow), so
    # the bracketing evaluations size their own.
    rough = eps_fn(coarse, None)
    lo, hi = calibration.bracket(lambda s: rough(s) <= epsilon, 1.0)
    guess = calibration.smallest_feasible(eps_fn(coarse, epsilon), epsilon, lo, hi, max(rtol, 1e-3))
    lo, hi = calibration.bracket(lambda s: fine(s) <= epsilon, guess) if fine(guess) > epsilon else (
        calibration.bracket_below(fine, epsilon, guess))
  else:
    lo, hi = calibration.bracket(lambda s: fine(s) <= epsilon, 1.0)
  hi = calibration.smallest_feasible(fine, epsilon, lo, hi, rtol)
  # The public epsilon_of picks its own grid; make sure it agrees.
  for _ in range(100):
    if epsilon_of(hi, delta, accountant=accountant, discretization=discretization,
                  **common) <= epsilon:
      return hi
    hi *= 1.0 + rtol
  raise ConfigError(f"calibration did not converge for epsilon {epsilon:g}")  # pragma: no cover


# --- serialisation ------------------------------------------------------------------

def _to_jsonable(value: Any) -> Any:
  if hasattr(value, "_fields"):  # a dp-accounting event namedtuple
    return {k: _to_jsonable(getattr(value, k)) for k in value._fields}
  if isinstance(value, (list, tuple)):
    return [_to_jsonable(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    raise DataError(f"an event holds the non-finite number {value!r}; JSON cannot store it")
  return value


def event_to_json(event: dp_event.DpEvent) -> dict:
  """The event as a JSON-ready dict: dp-accounting's own `to_named_tuple` form
  (module_name, class_name, then the event's fields), nested."""
  if not isinstance(event, dp_event.DpEvent):
    raise DataError(f"event_to_json needs a dp_accounting DpEvent, got {type(event).__name__}")
  return _to_jsonable(event.to_named_tuple())


def _from_jsonable(value: Any) -> Any:
  if isinstance(value, dict):
    if set(value) >= {"module_name", "class_name"}:
      if value["module_name"] != _EVENT_MODULE or value["class_name"] not in _EVENT_CLASSES:
        raise DataError(f"refusing to build event {value.get('module_name')!r}."
                        f"{value.get('class_name')!r}: only {sorted(_EVENT_CLASSES)} from "
                        f"{_EVENT_MODULE} are read")
      fields = list(value)
      tuple_type = collections.namedtuple("DpEventJson", fields)
      return tuple_type(**{k: _from_jsonable(v) for k, v in value.items()})
    raise DataError(f"an event's JSON has a mapping without module_name/class_name: {value!r}")
  if isinstance(value, list):
    return [_from_jsonable(v) for v in value]
  return value


def event_from_json(d: dict) -> dp_event.DpEvent:
  """Inverse of `event_to_json`, through dp-accounting's `DpEvent.from_named_tuple`."""
  if not isinstance(d, dict):
    raise DataError(f"an event's JSON must be an object, got {type(d).__name__}")
  try:
    return dp_event.DpEvent.from_named_tuple(_from_jsonable(d))
  except (TypeError, ValueError, AttributeError) as e:
    raise DataError(f"not a dp-accounting event: {e}") from None
