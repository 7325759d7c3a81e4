"""Public feature-map parameters (NTK weights, RFF frequencies) drawn once per run."""

from __future__ import annotations

import functools
from typing import Callable

import jax


def public_constant(fn: Callable) -> Callable:
  """Caches a seed-drawn public parameter, computed eagerly even inside a trace.

  Without the cache a jitted training step would redraw the parameters every
  step (for RFF frequencies, a third of the step). Computing them under
  `ensure_compile_time_eval` keeps a first call made while tracing from caching
  a tracer (it happens on resume, where no private pass runs first).
  """
  @functools.lru_cache(maxsize=1)  # one map at a time is all a run needs
  def cached(*args):
    with jax.ensure_compile_time_eval():
      return fn(*args)
  return cached
