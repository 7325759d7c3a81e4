"""Differential privacy: noise calibration, the Gaussian release, and the run's ledger.

Names load on first use, so importing this package (for ACCOUNTANTS, say)
does not import JAX or the accounting library.
"""

import importlib

_HOMES = {
    "ACCOUNTANTS": "parameters", "ADJACENCIES": "parameters",
    "check_accountant": "parameters", "check_adjacency": "parameters",
    "check_epsilon_delta": "parameters",
    "calibrate_composition": "accounting", "calibrate_gaussian": "accounting",
    "epsilon_of": "accounting", "format_sigma_table": "accounting",
    "mean_embedding_sensitivity": "accounting", "sigma_table": "accounting",
    "PrivacyLedger": "ledger", "ReleaseRecord": "ledger", "read_ledger": "ledger",
    "write_ledger": "ledger",
    "array_digest": "release", "gaussian_release": "release",
    "Lattice": "noise", "generator": "noise", "noise_rng": "noise",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
  if name not in _HOMES:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
