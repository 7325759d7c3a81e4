"""Multi-host jobs (TPU pods, several GPU machines): one process per host.

Every process runs the same command on the same data. The private embedding
and the generator steps are data-parallel over the devices of all processes
(`sharding.data_mesh` spans them); the primary process (index 0) alone decides
about the run directory, draws the noise and writes files; the others learn
its decisions by broadcast and read the release it stored, so every host
trains on the exact bytes that were stored.
Orbax checkpoints are collective: the run directory must be on storage every
host sees (a shared file system, or a bucket mounted at the same path).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import jax
import numpy as np

from vpntk_jax.errors import ConfigError, VpntkError

T = TypeVar("T")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins this process to a multi-host job (before any other JAX call).

  With no arguments JAX finds the job itself on Cloud TPU pods, SLURM and Open
  MPI; elsewhere give all three.
  """
  given = [a is not None for a in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ConfigError("give the coordinator address, the number of processes and this "
                     "process's id together, or none of them (auto-detection)")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def is_multi_process() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  return jax.process_index() == 0


def broadcast(tree: T) -> T:
  """The primary process's value of a pytree of host arrays, on every process."""
  if not is_multi_process():
    return tree
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(tree))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of this name."""
  if is_multi_process():
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def on_primary(fn: Callable[[], Any], what: str) -> Any:
  """Runs `fn` on the primary process only and tells the others whether it failed.

  Returns fn's result on the primary, None elsewhere. A failure raises on every
  process (the primary re-raises its own error), so no host is left waiting
  for a collective the primary will never reach.
  """
  result, error = None, None
  if is_primary():
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      error = e
  failed = bool(broadcast(np.asarray(error is not None)))
  if failed:
    if error is not None:
      raise error
    raise VpntkError(f"the primary process failed to {what}; its output says why")
  return result
