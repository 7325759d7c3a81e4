"""Differential privacy: noise calibration, the Gaussian release, and the run's ledger."""

from vpntk_jax.privacy.accounting import (
    ACCOUNTANTS,
    ADJACENCIES,
    calibrate_composition,
    calibrate_gaussian,
    check_accountant,
    check_adjacency,
    check_epsilon_delta,
    epsilon_of,
    format_sigma_table,
    mean_embedding_sensitivity,
    sigma_table,
)
from vpntk_jax.privacy.ledger import (
    PrivacyLedger,
    ReleaseRecord,
    read_ledger,
    write_ledger,
)
from vpntk_jax.privacy.release import array_digest, gaussian_release, noise_key

__all__ = [
    "ACCOUNTANTS",
    "ADJACENCIES",
    "PrivacyLedger",
    "ReleaseRecord",
    "array_digest",
    "calibrate_composition",
    "calibrate_gaussian",
    "check_accountant",
    "check_adjacency",
    "check_epsilon_delta",
    "epsilon_of",
    "format_sigma_table",
    "gaussian_release",
    "mean_embedding_sensitivity",
    "noise_key",
    "read_ledger",
    "sigma_table",
    "write_ledger",
]
