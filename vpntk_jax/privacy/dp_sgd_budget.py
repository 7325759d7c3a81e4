"""`vpntk privacy` for DP-SGD: the epsilon of T Poisson-subsampled Gaussian steps for a
noise multiplier, or the noise multiplier for an epsilon, per adjacency and accountant.

Two conventions for the same noise, both printed:

* z, as Opacus (`noise_multiplier`) and jax_privacy (`noise_multiplier`) take it,
  and as dp-accounting's events carry it: noise std / clip norm C.
* sigma, this library's noise multiplier: noise std / L2 sensitivity of the summed
  clipped gradients, which is C under add_remove and 2C under replace_one. So
  sigma = z under add_remove and sigma = z / 2 under replace_one
  (`subsampled.event_multiplier`).

The accounting and the search are `subsampled.epsilon_of` and
`subsampled.calibrate_noise_multiplier` (the one search: `privacy.calibration`);
this module only chooses what to ask them and lays the answers out.
"""

from __future__ import annotations

from typing import Any

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import subsampled
from vpntk_jax.privacy.parameters import (ADJACENCIES, _as_float, _check_delta,
                                          check_adjacency, check_epsilon_delta)

# The accountants that account Poisson-subsampled steps (analytic covers one release).
DP_SGD_ACCOUNTANTS = ("pld", "rdp")
_CONVENTIONS = (
    "z: noise std / clip norm C (Opacus and jax_privacy noise_multiplier; dp-accounting's "
    "events). sigma: noise std / L2 sensitivity (this library), the sensitivity being C "
    "under add_remove and 2C under replace_one, so sigma = z there and z / 2 here.")


def sampling_rate_of(sampling_rate: Any = None, batch_size: Any = None,
                     num_examples: Any = None) -> float:
  """q from itself, or from an expected batch size and the dataset size N (q = B / N)."""
  if (sampling_rate is None) == (batch_size is None):
    raise ConfigError("DP-SGD accounting needs the sampling rate: --sampling-rate Q, or "
                      "--batch-size B (the expected Poisson batch) with --num-examples N")
  if sampling_rate is not None:
    return subsampled.check_sampling_rate(sampling_rate)
  if num_examples is None:
    raise ConfigError("--batch-size B gives the sampling rate B / N: name N with "
                      "--num-examples N")
  b = subsampled.check_count(batch_size, "batch_size")
  n = subsampled.check_count(num_examples, "num_examples")
  if b > n:
    raise ConfigError(f"the expected batch size {b} exceeds the dataset size {n}")
  return b / n


def z_of(sigma: float, adjacency: str) -> float:
  """The Opacus / jax_privacy noise multiplier (std / C) of a library sigma."""
  return subsampled.event_multiplier(sigma, adjacency)


def sigma_of(z: float, adjacency: str) -> float:
  """The library's sigma (std / L2 sensitivity) of an Opacus / jax_privacy z."""
  return float(z) / subsampled.event_multiplier(1.0, adjacency)


def _unsupported(adjacency: str, accountant: str) -> str | None:
  # dp-accounting 0.6 has no RDP bound for Poisson sampling under replace-one
  # (subsampled.check_supported says the same as an error).
  if accountant == "rdp" and adjacency == "replace_one":
    return "dp-accounting has no RDP bound for Poisson sampling under replace-one"
  return None


def dp_sgd_table(delta: float, *, steps: int, sampling_rate: float | None = None,
                 batch_size: int | None = None, num_examples: int | None = None,
                 epsilon: float | None = None, noise_multiplier: float | None = None,
                 sigma: float | None = None,
                 adjacencies: tuple[str, ...] = ADJACENCIES) -> dict:
  """One row per adjacency and accountant: the noise multiplier (z and sigma) for
  `epsilon`, or the epsilon of a given noise (`noise_multiplier` z, or `sigma`).

  Exactly one of epsilon, noise_multiplier, sigma. A given z means the same noise std
  per clip norm under both adjacencies (so its sigma differs); a given sigma the same
  noise per sensitivity (so its z differs).
  """
  given = {k: v for k, v in (("epsilon", epsilon), ("noise_multiplier", noise_multiplier),
                             ("sigma", sigma)) if v is not None}
  if len(given) != 1:
    raise ConfigError("DP-SGD accounting takes exactly one of --epsilon (find the noise), "
                      "--noise-multiplier Z or --sigma S (find epsilon); got "
                      f"{', '.join('--' + k.replace('_', '-') for k in given) or 'none'}")
  delta = _check_delta(delta)
  steps = subsampled.check_steps(steps)
  q = sampling_rate_of(sampling_rate, batch_size, num_examples)
  if isinstance(adjacencies, str) or not adjacencies:
    raise ConfigError(f"adjacencies must be a non-empty tuple, got {adjacencies!r}")
  for adjacency in adjacencies:
    check_adjacency(adjacency)
  if epsilon is not None:
    check_epsilon_delta(epsilon, delta)
  elif noise_multiplier is not None:
    subsampled.check_noise_multiplier(noise_multiplier)
  else:
    subsampled.check_noise_multiplier(sigma)
  common = dict(sampling_rate=q, steps=steps)
  rows = []
  for adjacency in adjacencies:
    for accountant in DP_SGD_ACCOUNTANTS:
      row = {"adjacency": adjacency, "accountant": accountant}
      note = _unsupported(adjacency, accountant)
      if note is not None:
        rows.append({**row, "z": None, "sigma": None, "epsilon": None, "note": note})
        continue
      if epsilon is not None:
        s = subsampled.calibrate_noise_multiplier(
            float(epsilon), delta, adjacency=adjacency, accountant=accountant, **common)
      else:
        s = sigma_of(noise_multiplier, adjacency) if sigma is None else float(sigma)
      eps = subsampled.epsilon_of(s, delta, adjacency=adjacency, accountant=accountant,
                                  **common)
      rows.append({**row, "z": z_of(s, adjacency), "sigma": s, "epsilon": eps, "note": ""})
  table = {"mechanism": "dp_sgd", "delta": delta, "steps": steps, "sampling_rate": q,
           "given": {k: float(_as_float(v, k)) for k, v in given.items()}, "rows": rows,
           "conventions": _CONVENTIONS}
  if batch_size is not None:
    table["batch_size"], table["num_examples"] = int(batch_size), int(num_examples)
  return table


def format_dp_sgd_table(table: dict) -> str:
  """Human-readable rendering of `dp_sgd_table`'s result, for `vpntk privacy`."""
  q = table["sampling_rate"]
  batch = (f" (expected batch {table['batch_size']} of N={table['num_examples']})"
           if "batch_size" in table else "")
  (name, value), = table["given"].items()
  asked = {"epsilon": f"noise multiplier for epsilon={value:g}",
           "noise_multiplier": f"epsilon for z={value:g} (noise std / clip norm)",
           "sigma": f"epsilon for sigma={value:g} (noise std / L2 sensitivity)"}[name]
  lines = [f"DP-SGD, Poisson-subsampled Gaussian: q={q:.6g}{batch}, T={table['steps']} steps, "
           f"delta={table['delta']:g}: {asked}",
           f"{'adjacency':<12} {'accountant':<10} {'z':>10} {'sigma':>10} {'epsilon':>10}  notes"]
  for row in table["rows"]:
    if row["z"] is None:
      lines.append(f"{row['adjacency']:<12} {row['accountant']:<10} {'-':>10} {'-':>10} "
                   f"{'-':>10}  {row['note']}")
      continue
    lines.append(f"{row['adjacency']:<12} {row['accountant']:<10} {row['z']:>10.4f} "
                 f"{row['sigma']:>10.4f} {row['epsilon']:>10.4f}")
  lines.append(table["conventions"])
  return "\n".join(lines)
