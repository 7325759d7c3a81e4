"""The names and ranges of privacy parameters: which accountants and adjacencies
exist, and what epsilon and delta may be. Pure checks, importable without the
accounting library (the CLI and config validation use them)."""

from __future__ import annotations

import math
import operator
from typing import Any

from vpntk_jax.errors import ConfigError

ACCOUNTANTS = ("pld", "rdp", "analytic")
ADJACENCIES = ("replace_one", "add_remove")


def _as_float(value: Any, name: str) -> float:
  # bool and str convert to float silently; neither is a meaningful privacy parameter.
  if isinstance(value, (bool, str, bytes)):
    raise ConfigError(f"{name} must be a number, got {value!r}")
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{name} must be a number, got {value!r}") from None


def _as_count(value: Any, name: str) -> int:
  if isinstance(value, bool):
    raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
  try:
    count = operator.index(value)
  except TypeError:
    raise ConfigError(f"{name} must be an integer >= 1, got {value!r}") from None
  if count < 1:
    raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
  return count


def _check_delta(delta: Any) -> float:
  value = _as_float(delta, "delta")
  # Written so that NaN fails too.
  if not 0.0 < value < 1.0:
    raise ConfigError(f"delta must be in the open interval (0, 1), got {delta!r}")
  return value


def check_epsilon_delta(epsilon: float, delta: float) -> None:
  """Raises ConfigError unless 0 < epsilon < inf and 0 < delta < 1."""
  value = _as_float(epsilon, "epsilon")
  if not (math.isfinite(value) and value > 0):
    raise ConfigError(f"epsilon must be a finite number > 0, got {epsilon!r}")
  _check_delta(delta)


def check_accountant(accountant: str) -> None:
  """Raises ConfigError for an accountant name not in ACCOUNTANTS."""
  if accountant not in ACCOUNTANTS:
    raise ConfigError(f"unknown accountant {accountant!r}; choose one of {', '.join(ACCOUNTANTS)}")


def check_adjacency(adjacency: str) -> None:
  """Raises ConfigError for an adjacency name not in ADJACENCIES."""
  if adjacency not in ADJACENCIES:
    raise ConfigError(f"unknown adjacency {adjacency!r}; choose one of {', '.join(ADJACENCIES)}")
