"""The benchmarks' one timer."""

from __future__ import annotations

import time

import jax
import numpy as np


def median_seconds(fn, repeats: int) -> float:
  """Median wall seconds of `repeats` calls of fn() (its result waited for), after one
  warm-up call that compiles."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))
