"""Data parallelism over all devices (of every host): one mesh axis, "data".

Private embeddings shard each chunk's rows over the devices and sum the
per-device class sums with `psum` inside `jax.shard_map`. Generator steps
shard the synthetic batch with a `NamedSharding` constraint and let XLA
partition the rest (BatchNorm statistics stay global, as on one device).
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vpntk_jax.errors import ConfigError

DATA_AXIS = "data"


def data_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (all when None).

  In a multi-host job (`vpntk_jax.distributed`) it must span every process's devices.
  """
  devices = jax.devices()
  n = len(devices) if num_devices is None else num_devices
  if not 1 <= n <= len(devices):
    raise ValueError(f"asked for {n} devices, {len(devices)} available "
                     f"({devices[0].platform})")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"a multi-host job uses all {len(devices)} devices of its "
                     f"{jax.process_count()} processes; asked for {n}")
  # Auto axes: XLA partitions whatever is not in a shard_map (the generator).
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def device_mesh(num_devices: int | None) -> Mesh | None:
  """The mesh of `--devices N` (a config's `devices`; None: all, of every host): a
  data mesh when more than one device is used, else None (plain jit).

  `vpntk synthesize` and `vpntk pretrain` both build theirs here; a count that
  is not a positive integer, or more devices than there are, is a ConfigError.
  """
  n = jax.device_count() if num_devices is None else num_devices
  if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
    raise ConfigError(f"devices (--devices) must be an integer >= 1, got {num_devices!r}")
  if n == 1:
    return None
  try:
    return data_mesh(n)
  except ValueError as e:
    raise ConfigError(f"--devices {n}: {e}") from None


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def round_up_to_devices(size: int, mesh: Mesh | None) -> int:
  n = 1 if mesh is None else mesh.size
  return -(-size // n) * n


def summed_over_rows(fn, mesh: Mesh | None, num_row_args: int):
  """jit of `fn(replicated, *row_arrays)`, a sum over the rows; with a mesh the rows
  are split over its devices and the per-device sums added with psum."""
  if mesh is None:
    return jax.jit(fn)
  rows = P(DATA_AXIS)
  return jax.jit(jax.shard_map(lambda *args: jax.lax.psum(fn(*args), DATA_AXIS), mesh=mesh,
                               in_specs=(P(),) + (rows,) * num_row_args, out_specs=P()))


def row_placer(mesh: Mesh | None):
  """Puts a host chunk where `summed_over_rows` takes it: split over the mesh's devices."""
  if mesh is None:
    return jax.numpy.asarray
  sharding = batch_sharding(mesh)
  return lambda a: jax.device_put(a, sharding)
