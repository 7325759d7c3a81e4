"""The benchmarks' one timer, and the yardstick of a program's arithmetic (XLA's FLOP count
against the device's matmul rate)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
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


def median_seconds_each(fns: dict, repeats: int) -> dict:
  """{name: median wall seconds} of `repeats` calls of each fn() (results waited for),
  after one warm-up call of each; the calls alternate between the fns, so that other
  work on a shared machine slows each alike."""
  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(t)) for name, t in times.items()}


def xla_flops(compiled) -> float:
  """XLA's FLOP count of a compiled program (`jax.stages.Compiled`); NaN where the
  backend gives none. cost_analysis() is a dict, or a list of one per program in
  older jax versions."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def matmul_flops_per_s(size: int, repeats: int = 5) -> float:
  """This device's float32 matmul rate (FLOP/s) on a size^3 product, the yardstick of
  a program's arithmetic: 2 size^3 FLOPs over the median of `repeats` calls."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  return 2 * size ** 3 / median_seconds(lambda: matmul(a), repeats)
