"""DP-SGD: Poisson batches, per-example clipping, an exact sum on the noise lattice,
and the lattice Gaussian of `privacy.release`.

One step, for a loss of ONE example `loss_fn(params, example, key) -> scalar`:

  1. `poisson_batch` (host, numpy Generator from `privacy.noise`): each example
     joins independently with probability q; the indices are padded to a bucket
     of fixed sizes (padding: index 0, mask 0) so XLA compiles a few shapes only.
  2. per-example gradients by jax.vmap(jax.grad(loss_fn)), each clipped to L2 norm
     <= C with a bound that float32 rounding cannot break (`clip_per_example`),
     then rounded to the lattice g * Z^d of the release (`noise.Lattice`,
     sensitivity C) and summed in int32 exactly (`lattice_grad_sum`). A float32
     sum would not do: its rounding depends on the other examples, so the sum of
     neighbouring batches could differ by more than C (worst-case summation error
     grows like batch^2 * 2^-24 * C). Padding rows contribute exactly 0.
  3. host: the integer sum (one int32 vector of 2d entries: high and low parts)
     becomes int64, then `release.gaussian_release(sum, sensitivity=C, sigma=z)`
     adds the lattice Gaussian; z = sigma (add_remove) or 2 sigma (replace_one),
     the noise multiplier in dp-accounting's units (`subsampled.event_multiplier`):
     one example moves the integer sum by at most C/g + sqrt(d)/2 (its own
     rounding) <= the lattice's index sensitivity C/g + sqrt(d), which is what
     the release's noise is scaled to; under replace_one the removed and the
     added example each move it that far, which dp-accounting's REPLACE_ONE
     accounts with multiplier z = 2 sigma. The ledger's sensitivity is the
     lattice's `effective_sensitivity` (x2 under replace_one).
  4. divided by the PUBLIC expected batch size q * N (never the realised size),
     unflattened, one optax update on the device.

Accounting (`privacy.subsampled`): `dp_sgd_event(sigma, q, T, adjacency=...)`.
Batches cut at `max_batch` (truncated Poisson) must be accounted with
`num_examples` and `max_batch` (`TruncatedSubsampledGaussianDpEvent`); with
`max_batch=None` batches are never cut and plain Poisson accounting applies.
Nothing here treats a fixed-size batch as Poisson.

The per-example keys: any keys drawn independently of the data (e.g.
jax.random.split of a fresh key, one per row). Assigning them by batch position
is fine: the sum is symmetric and the keys i.i.d., so the output has the
distribution of each example drawing its own key.

Privacy of diagnostics: the realised batch size (mask.sum()) and any fraction of
clipped examples are functions of the private data; do not log them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from vpntk_jax import sharding
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy import release
from vpntk_jax.privacy.noise import Lattice
from vpntk_jax.privacy.parameters import _as_float, check_adjacency
from vpntk_jax.sharding import DATA_AXIS
from vpntk_jax.privacy.subsampled import (check_clip_norm, check_noise_multiplier,
                                          check_sampling_rate, check_count,
                                          event_multiplier)

# Batches are padded to a multiple of this many rows.
BUCKET = 64
# float32 unit roundoff, and the relative error allowed per multiply, divide or
# sqrt: 2 ulp, so approximate GPU intrinsics are covered too. Additions are IEEE.
_U32 = 2.0**-24
_OP_ERROR = 4.0 * _U32
_TINY32 = 2.0**-126  # smallest normal float32 (flush-to-zero loses at most this)
_SUBNORMAL32 = 2.0**-149
_INT32_MAX = 2**31 - 1


# --- batches ------------------------------------------------------------------------

def bucket_size(count: int, bucket: int = BUCKET) -> int:
  """Rows of the padded batch for `count` real examples: a multiple of `bucket`, >= bucket."""
  return max(bucket, -(-int(count) // bucket) * bucket)


def poisson_batch(rng: np.random.Generator, num_examples: int, sampling_rate: float,
                  max_batch: int | None = None, *,
                  bucket: int = BUCKET) -> tuple[np.ndarray, np.ndarray]:
  """A Poisson batch: (indices int32, mask float32), padded to `bucket_size`.

  Every example joins independently with probability `sampling_rate`. With
  `max_batch`, a draw larger than max_batch is cut to a uniformly random subset
  of max_batch (truncated Poisson: account it with
  `subsampled.dp_sgd_event(..., num_examples=N, max_batch=max_batch)`); with
  None it is never cut (padded shapes then vary more). `rng` must be a
  `privacy.noise.generator`: the batch must be as secret as the noise.
  """
  if not isinstance(rng, np.random.Generator):
    raise ConfigError(f"poisson_batch needs a numpy Generator (privacy.noise.generator), "
                      f"got {type(rng).__name__}")
  n = check_count(num_examples, "num_examples")
  q = check_sampling_rate(sampling_rate)
  bucket = check_count(bucket, "bucket")
  if max_batch is not None:
    max_batch = check_count(max_batch, "max_batch")
  chosen = np.flatnonzero(rng.random(n) < q)
  if max_batch is not None and chosen.size > max_batch:
    chosen = np.sort(rng.choice(chosen, size=max_batch, replace=False))
  rows = bucket_size(chosen.size, bucket)
  indices = np.zeros(rows, np.int32)
  indices[:chosen.size] = chosen
  mask = np.zeros(rows, np.float32)
  mask[:chosen.size] = 1.0
  return indices, mask


# --- clipping -----------------------------------------------------------------------

def _chunk(size: int) -> int:
  """Length of the first-level reductions of a squared norm (about sqrt(size))."""
  return 1 << max(0, math.ceil(0.5 * math.log2(max(size, 1))))


def _partial_count(sizes: list[int], chunk: int) -> int:
  return sum(1 if s <= chunk else -(-s // chunk) for s in sizes)


def _gamma(k: int) -> float:
  """Relative error bound of summing k+1 non-negative float32 numbers in any order."""
  return k * _U32 / (1.0 - k * _U32)


def safe_clip_norm(clip_norm: float, sizes: list[int]) -> np.float32:
  """The float32 clip target C' that makes every clipped gradient's exact norm <= C.

  `clip_per_example` computes n = ||g / m|| (m: max |g_j| rounded up to a power of
  two, so n >= 1/2) with two
  levels of reductions of at most `_chunk(d)` and `_partial_count` terms, then
  w = (g / m) * min(m, C' / n). Each reduction in any order errs by at most
  gamma(k) relatively (non-negative terms), each multiply/divide/sqrt by
  `_OP_ERROR`, flushed or gradual underflow by `_TINY32` per squared entry and
  `_SUBNORMAL32` per output entry; so ||w|| <= C' (1+e)^2 / (1 - eps_n) +
  sqrt(d) 2^-149, and C' is the largest float32 making that <= C.
  """
  c = check_clip_norm(clip_norm)
  d = int(sum(sizes))
  chunk = _chunk(max(sizes))
  parts = _partial_count(sizes, chunk)
  e = _OP_ERROR
  # Underflow loses at most 2^-126 per squared entry, against a sum of squares >= 1/4.
  low = (1 - e) * (1 - _gamma(chunk - 1)) * (1 - _gamma(parts - 1)) - 4 * d * _TINY32
  one_minus_eps = math.sqrt(low) * (1 - e)
  target = (c - math.sqrt(d) * _SUBNORMAL32) * one_minus_eps / (1 + e) ** 2
  # Safety margin against the float64 arithmetic of this bound itself.
  target *= 1 - 1e-12
  c32 = np.float32(target)
  if float(c32) > target:
    c32 = np.nextafter(c32, np.float32(0))
  if not c32 > 0:  # pragma: no cover  (check_clip_norm keeps C far from this)
    raise ConfigError(f"clip_norm {clip_norm!r} is too small for float32 clipping")
  return c32


def _pow2(k: jax.Array) -> jax.Array:
  """2^k as float32 for integer k in [-126, 127], built from its bits (exact)."""
  return jax.lax.bitcast_convert_type(((k + 127) << 23).astype(jnp.int32), jnp.float32)


def _pow2_or_max(e: jax.Array) -> jax.Array:
  """2^e, or the largest float32 where 2^e overflows (e = 128)."""
  return jnp.where(e > 127, jnp.float32(np.finfo(np.float32).max), _pow2(jnp.minimum(e, 127)))


def _clip_one(grad: Any, c32: np.float32, chunk: int) -> Any:
  leaves, treedef = jax.tree.flatten(grad)
  flat = [jnp.asarray(x, jnp.float32).reshape(-1) for x in leaves]
  present = [x for x in flat if x.size]
  m = jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in present]))
  # Checked entry by entry: XLA's max need not propagate NaN.
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in present]))
  ok = finite & jnp.isfinite(m) & (m > 0)
  # g / 2^e with m = mantissa * 2^e: exact, in two normal power-of-two factors (a
  # plain g / m may become g * (1/m), and 1/m flushes to zero for m > 2^126).
  _, e = jnp.frexp(jnp.where(ok, m, jnp.float32(1)))
  first = e // 2
  down = _pow2(-first)
  scaled = [jnp.where(ok, (x * down) * _pow2(first - e), jnp.float32(0)) for x in flat]
  m_safe = _pow2_or_max(e)
  partials = []
  for x in scaled:
    if not x.size:
      continue
    if x.size <= chunk:
      partials.append(jnp.sum(x * x)[None])
      continue
    full = (x.size // chunk) * chunk
    head = x[:full].reshape(-1, chunk)
    partials.append(jnp.sum(head * head, axis=1))
    if full < x.size:
      partials.append(jnp.sum(x[full:] * x[full:])[None])
  norm = jnp.sqrt(jnp.sum(jnp.concatenate(partials)))
  r = jnp.minimum(m_safe, c32 / jnp.where(ok, norm, jnp.float32(1)))
  r = jnp.where(ok, r, jnp.float32(0))
  clipped = [(x * r).reshape(leaf.shape) for x, leaf in zip(scaled, leaves)]
  return jax.tree.unflatten(treedef, clipped)


def _sizes(tree: Any) -> list[int]:
  return [int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree)]


@functools.partial(jax.jit, static_argnames=("clip_norm",))
def clip_per_example(grads: Any, clip_norm: float) -> Any:
  """Per-example gradients (leading axis: examples) clipped to L2 norm <= clip_norm.

  The bound holds for the exact norm of the float32 result, whatever the input:
  an example whose gradient has a non-finite or all-zero entry set contributes 0.
  Inputs of any float dtype are clipped as float32.
  """
  sizes = [int(np.prod(np.shape(x)[1:])) for x in jax.tree.leaves(grads)]
  sizes = [s for s in sizes if s] or [1]
  c32 = safe_clip_norm(clip_norm, sizes)
  return jax.vmap(functools.partial(_clip_one, c32=c32, chunk=_chunk(max(sizes))))(grads)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def per_example_grads(loss_fn: Callable, params: Any, batch: Any, keys: jax.Array) -> Any:
  """jax.vmap(jax.grad(loss_fn)) over the rows of `batch` and `keys`."""
  return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, batch, keys)


# --- sums ---------------------------------------------------------------------------

def _check_rows(batch: Any, mask: Any, keys: Any, microbatch: int | None) -> int:
  rows = int(np.shape(mask)[0])
  for x in jax.tree.leaves(batch) + [keys]:
    if np.shape(x)[0] != rows:
      raise DataError(f"batch, mask and keys need the same number of rows; mask has {rows}, "
                      f"an array has {np.shape(x)[0]}")
  if microbatch is not None and rows % microbatch:
    raise ConfigError(f"microbatch {microbatch} must divide the padded batch size {rows}")
  return rows


def _split_shift(rows: int) -> int:
  """Bits k of the low part: rows * (2^k - 1) <= 2^31 - 1."""
  return int(math.floor(math.log2(_INT32_MAX / rows + 1)))


def _microbatched(fn: Callable, batch: Any, mask: jax.Array, keys: jax.Array,
                  microbatch: int | None, init: Any) -> Any:
  """Sum over microbatches of fn(batch, mask, keys) (a pytree), by lax.scan."""
  if microbatch is None:
    return fn(batch, mask, keys)
  rows = mask.shape[0]
  shape = lambda x: x.reshape((rows // microbatch, microbatch) + x.shape[1:])
  xs = (jax.tree.map(shape, batch), shape(mask), shape(keys))

  def body(carry, x):
    return jax.tree.map(jnp.add, carry, fn(*x)), None
  return jax.lax.scan(body, init, xs)[0]


@functools.partial(jax.jit, static_argnames=("loss_fn", "clip_norm", "microbatch"))
def _clipped_sum(loss_fn, params, batch, mask, keys, clip_norm, microbatch):
  def part(b, m, k):
    clipped = clip_per_example(per_example_grads(loss_fn, params, b, k), clip_norm)
    return jax.tree.map(
        lambda g: jnp.sum(jnp.where((m > 0).reshape((-1,) + (1,) * (g.ndim - 1)), g, 0), 0),
        clipped)
  init = jax.tree.map(lambda p: jnp.zeros(np.shape(p), jnp.float32), params)
  return _microbatched(part, batch, mask, keys, microbatch, init)


def clipped_grad_sum(loss_fn: Callable, params: Any, batch: Any, mask: Any, keys: jax.Array,
                     clip_norm: float, *, microbatch: int | None = None) -> Any:
  """Sum over the real rows (mask > 0) of the clipped per-example gradients, float32.

  For inspection and tests only: its float32 rounding depends on the whole batch.
  The private step uses `lattice_grad_sum`, which is exact.
  """
  clip_norm = check_clip_norm(clip_norm)
  _check_rows(batch, mask, keys, microbatch)
  return _clipped_sum(loss_fn, params, batch, jnp.asarray(mask), keys, clip_norm, microbatch)


def lattice_for(params: Any, clip_norm: float) -> Lattice:
  """The lattice a DP-SGD step of these parameters draws its noise on (sensitivity C)."""
  return Lattice.for_release(check_clip_norm(clip_norm), int(sum(_sizes(params))))


def _lattice_parts(loss_fn, params, batch, mask, keys, clip_norm, microbatch, total_rows,
                   varying=lambda tree: tree):
  """The int32 high and low parts of the lattice sum over these rows; the split is
  sized for `total_rows`, all rows of the batch (on every device), so the parts of
  all devices also sum without overflow."""
  lattice = lattice_for(params, clip_norm)
  shift = _split_shift(total_rows)
  # |index| <= C/g + 1/2 per coordinate; the high parts' sum must fit in int32 too.
  max_index = math.floor(clip_norm / lattice.granularity * (1 + 1e-6) + 0.5) + 1
  if total_rows * (max_index // 2**shift + 1) > _INT32_MAX:
    raise ConfigError(f"a batch of {total_rows} rows with {lattice.size} parameters is too "
                      f"large for the exact int32 gradient sum")
  inverse = np.float32(1.0 / lattice.granularity)  # a power of two: exact
  low_mask = jnp.int32(2**shift - 1)

  def part(b, m, k):
    clipped = clip_per_example(per_example_grads(loss_fn, params, b, k), clip_norm)
    flat = jnp.concatenate([x.reshape(x.shape[0], -1) for x in jax.tree.leaves(clipped)], 1)
    index = jnp.rint(flat * inverse).astype(jnp.int32)
    index = jnp.where((m > 0)[:, None], index, 0)
    return (jnp.sum(index >> shift, 0), jnp.sum(index & low_mask, 0))
  zeros = varying(jnp.zeros((lattice.size,), jnp.int32))  # the scan's carry, per device
  high, low = _microbatched(part, batch, mask, keys, microbatch, (zeros, zeros))
  return jnp.concatenate([high, low])


@functools.partial(jax.jit, static_argnames=("loss_fn", "clip_norm", "microbatch"))
def _lattice_sum(loss_fn, params, batch, mask, keys, clip_norm, microbatch):
  return _lattice_parts(loss_fn, params, batch, mask, keys, clip_norm, microbatch,
                        mask.shape[0])


def _device_varying(tree):
  # Inside shard_map a gradient with respect to a replicated input would be summed
  # over the devices; a per-device copy keeps each example's gradient its own.
  cast = getattr(jax.lax, "pcast", None)
  if cast is not None:
    return jax.tree.map(lambda x: cast(x, DATA_AXIS, to="varying"), tree)
  return jax.tree.map(lambda x: jax.lax.pvary(x, DATA_AXIS), tree)


@functools.partial(jax.jit, static_argnames=("loss_fn", "clip_norm", "microbatch", "mesh"))
def _sharded_lattice_sum(loss_fn, params, batch, mask, keys, clip_norm, microbatch, mesh):
  rows = mask.shape[0]

  def local(p, b, m, k):
    parts = _lattice_parts(loss_fn, _device_varying(p), b, m, k, clip_norm, microbatch, rows,
                           varying=_device_varying)
    return jax.lax.psum(parts, DATA_AXIS)  # integers: exact in any order
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS),
                                                   P(DATA_AXIS)),
                       out_specs=P())(params, batch, mask, keys)


def lattice_grad_sum(loss_fn: Callable, params: Any, batch: Any, mask: Any, keys: jax.Array,
                     clip_norm: float, *, microbatch: int | None = None,
                     mesh=None) -> np.ndarray:
  """The exact sum over real rows of round(clipped gradient / g), as int64 on the host.

  g is `lattice_for(params, clip_norm).granularity`; the order is that of
  `ravel_pytree(params)`. The device sums high and low bits in int32 (no
  overflow, no rounding); they come back as one vector and are joined here.
  With a `sharding.data_mesh`, the rows are split over its devices (each runs
  `microbatch` rows at a time) and the integer parts summed across them: the
  same integers as on one device.
  """
  clip_norm = check_clip_norm(clip_norm)
  rows = _check_rows(batch, mask, keys, None if mesh is not None else microbatch)
  if mesh is None:
    parts = _lattice_sum(loss_fn, params, batch, jnp.asarray(mask), keys, clip_norm,
                         microbatch)
  else:
    if rows % mesh.size or (microbatch is not None and (rows // mesh.size) % microbatch):
      raise ConfigError(f"a padded batch of {rows} rows does not split into {mesh.size} "
                        f"devices" + (f" x microbatches of {microbatch}" if microbatch else ""))
    rows_on = sharding.batch_sharding(mesh)
    batch, mask, keys = jax.device_put((batch, jnp.asarray(mask), keys), rows_on)
    parts = _sharded_lattice_sum(loss_fn, params, batch, mask, keys, clip_norm, microbatch,
                                 mesh)
  parts = np.asarray(parts).astype(np.int64)
  d = parts.size // 2
  return (parts[:d] << _split_shift(rows)) + parts[d:]


def compiled_lattice_sum(loss_fn: Callable, params: Any, example: Any, rows: int,
                         clip_norm: float, *, microbatch: int | None = None):
  """The compiled per-example part of a step (`lattice_grad_sum`) of `rows` padded rows
  (a jax `Compiled`: XLA's memory and cost analyses); later steps of that shape reuse
  the compilation.

  `example`: one example's arrays (a pytree like a batch row), e.g. zeros.
  """
  clip_norm = check_clip_norm(clip_norm)
  batch = jax.tree.map(lambda x: jnp.zeros((rows,) + np.shape(x), jnp.asarray(x).dtype), example)
  mask = jnp.zeros((rows,), jnp.float32)
  keys = jax.random.split(jax.random.key(0), rows)
  _check_rows(batch, mask, keys, _check_microbatch(microbatch))
  return _lattice_sum.lower(loss_fn, params, batch, mask, keys, clip_norm, microbatch).compile()


def step_memory_bytes(loss_fn: Callable, params: Any, example: Any, rows: int,
                      clip_norm: float, *, microbatch: int | None = None) -> int | None:
  """Device memory the per-example part of a step (`lattice_grad_sum`) of `rows` padded
  rows needs, from XLA's own analysis of the compiled program (which later steps
  of that shape reuse); None where the backend does not report it.

  `example`: one example's arrays (a pytree like a batch row), e.g. zeros.
  """
  compiled = compiled_lattice_sum(loss_fn, params, example, rows, clip_norm,
                                  microbatch=microbatch)
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes)


def _unflatten(params: Any, vector: np.ndarray) -> Any:
  """`vector` (in `ravel_pytree(params)` order) as a pytree shaped and typed like params."""
  leaves, treedef = jax.tree.flatten(params)
  out, start = [], 0
  for leaf in leaves:
    size = int(np.prod(np.shape(leaf)))
    out.append(jnp.asarray(vector[start:start + size].reshape(np.shape(leaf)), leaf.dtype))
    start += size
  return jax.tree.unflatten(treedef, out)


# --- steps --------------------------------------------------------------------------

def _check_microbatch(microbatch: int | None) -> int | None:
  return None if microbatch is None else check_count(microbatch, "microbatch")


@functools.partial(jax.jit, static_argnames=("optimizer",))
def _apply(optimizer, params, opt_state, grad):
  updates, opt_state = optimizer.update(grad, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def make_dp_sgd_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                     clip_norm: float, noise_multiplier: float, expected_batch_size: float,
                     adjacency: str, microbatch: int | None = None, mesh=None) -> Callable:
  """step(params, opt_state, batch, mask, keys, rng) -> (params, opt_state).

  `noise_multiplier` is the house one (noise std / L2 sensitivity: C under
  add_remove, 2C under replace_one), as `subsampled.calibrate_noise_multiplier`
  returns it; `expected_batch_size` is the public q * N. `rng` is a
  `privacy.noise.generator`, for the noise only (give poisson_batch its own).
  With a `mesh`, the per-example work is split over its devices
  (`lattice_grad_sum`); the noise is drawn once, on the host.
  """
  clip_norm = check_clip_norm(clip_norm)
  sigma = check_noise_multiplier(noise_multiplier)
  check_adjacency(adjacency)
  scale = _as_float(expected_batch_size, "expected_batch_size")
  if not (math.isfinite(scale) and scale > 0):
    raise ConfigError(f"expected_batch_size (q * N, public) must be finite and > 0, "
                      f"got {expected_batch_size!r}")
  microbatch = _check_microbatch(microbatch)
  z = event_multiplier(sigma, adjacency)

  def step(params, opt_state, batch, mask, keys, rng):
    if not isinstance(rng, np.random.Generator):
      raise ConfigError(f"the DP-SGD noise needs a numpy Generator (privacy.noise.generator), "
                        f"got {type(rng).__name__}")
    total = lattice_grad_sum(loss_fn, params, batch, mask, keys, clip_norm,
                             microbatch=microbatch, mesh=mesh)
    lattice = lattice_for(params, clip_norm)
    statistic = total.astype(np.float64) * lattice.granularity  # exact: on the lattice
    noisy, used = release.gaussian_release(statistic, sensitivity=clip_norm, sigma=z, rng=rng)
    if used is None or used.granularity != lattice.granularity:  # pragma: no cover
      raise DataError("the release's lattice differs from the one the gradients were summed on")
    grad = _unflatten(params, noisy / np.float32(scale))
    return _apply(optimizer, params, opt_state, grad)

  return step


def make_non_private_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
  """step(params, opt_state, batch, mask, keys) -> (params, opt_state): the mean gradient
  over the real rows, no clipping, no noise. NOT private: for benchmarks and baselines."""

  @jax.jit
  def step(params, opt_state, batch, mask, keys):
    def mean_loss(p):
      losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, batch, keys)
      real = mask > 0
      return jnp.sum(jnp.where(real, losses, 0)) / jnp.maximum(jnp.sum(real), 1)
    grad = jax.grad(mean_loss)(params)
    updates, opt_state = optimizer.update(grad, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  return step


def gather(data: Any, indices: np.ndarray) -> Any:
  """The rows `indices` of every array in `data` (a pytree of arrays with a leading axis)."""
  indices = np.asarray(indices)
  if indices.dtype.kind not in "iu":
    raise DataError(f"batch indices must be integers, got {indices.dtype}")
  return jax.tree.map(lambda x: x[indices], data)

