"""One DP-SGD step (privacy.dp_sgd) against a non-private step and a per-example
Python loop (one jax.grad call per example, the reference implementations'
style), on the same model and batch, in one process.

    python -m benchmarks.dp_sgd_step                 # small convnet, batch 256
    python -m benchmarks.dp_sgd_step --quick         # batch 64, fewer repeats
    python -m benchmarks.dp_sgd_step --model unet    # the EDM UNet ("tiny"), 2 noise draws
    python -m benchmarks.dp_sgd_step --model unet --unet-size reference --multiplicity 4 \
        --microbatch 64 --batch 256 --batches 256,1024,2048 --json out.json   # the GPU size

The DP step is also split into its device part (per-example gradients, clip,
exact lattice sum: `lattice_grad_sum`) and its host noise (`gaussian_release` of
the flat sum). The loop clips each gradient with the same `clip_per_example`
and adds float32 noise on the device (no lattice), so it is, if anything,
favoured. Weights and data are random (timing does not depend on them). Prints
one JSON object (`--json` also writes it); seconds are medians after one warm-up call.

`--batches` then times the whole DP step at each padded batch size (ascending)
and reads the device's peak memory after it (`memory_stats()["peak_bytes_in_use"]`,
the process's peak so far: ascending order makes it this batch's; None on the CPU,
which keeps no such count), next to XLA's own figure for the compiled
per-example part (`dp_sgd.step_memory_bytes`, on every backend). A batch the
device cannot hold is recorded as out of memory and the larger ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from vpntk_jax import io_utils
from vpntk_jax.privacy import release
from vpntk_jax.privacy.noise import generator, noise_rng
from vpntk_jax.privacy import dp_sgd
from benchmarks.timing import median_seconds

SHAPE = (28, 28, 1)
CLIP = 1e-3
SIGMA = 1.0


class ConvNet(nn.Module):
  """A small classifier with GroupNorm (never batch statistics under DP-SGD)."""

  @nn.compact
  def __call__(self, x):
    x = nn.silu(nn.GroupNorm(4)(nn.Conv(16, (3, 3))(x)))
    x = nn.silu(nn.GroupNorm(4)(nn.Conv(32, (3, 3), strides=(2, 2))(x)))
    x = nn.silu(nn.Conv(32, (3, 3), strides=(2, 2))(x))
    return nn.Dense(10)(jnp.mean(x, axis=(-3, -2)))


def convnet():
  model = ConvNet()
  params = model.init(jax.random.key(0), jnp.zeros((1,) + SHAPE))["params"]

  def loss_fn(params, example, key):
    image, label = example
    # Per-example key: a small input perturbation, as a diffusion loss draws noise.
    x = image.astype(jnp.float32) / 255.0 + 0.01 * jax.random.normal(key, image.shape)
    logits = model.apply({"params": params}, x[None])[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits, label)
  return params, loss_fn


def unet(multiplicity: int, size: str = "tiny"):
  # The diffusion model's modules are imported only when this model is asked for.
  from vpntk_jax.diffusion import edm
  from vpntk_jax.models import unet as unet_lib
  config = unet_lib.unet_config(size, SHAPE, 10)
  model = unet_lib.UNet(config)
  params = unet_lib.init_params(model, jax.random.key(0))
  apply_fn = unet_lib.make_apply_fn(model)

  def loss_fn(params, example, key):
    image, label = example
    return edm.per_example_loss(params, apply_fn, image, label, key,
                                multiplicity=multiplicity, num_classes=10,
                                label_dropout=config.label_dropout)
  return params, loss_fn




def per_example_loop_step(loss_fn, optimizer):
  """The reference style: one jitted grad call per example, clipped, summed, noised."""
  grad = jax.jit(jax.grad(loss_fn))
  clip = jax.jit(lambda g: jax.tree.map(lambda x: x[0], dp_sgd.clip_per_example(
      jax.tree.map(lambda x: x[None], g), CLIP)))

  @jax.jit
  def finish(params, opt_state, total, key, scale):
    leaves, treedef = jax.tree.flatten(total)
    keys = jax.random.split(key, len(leaves))
    noisy = [(x + SIGMA * CLIP * jax.random.normal(k, x.shape)) / scale
             for x, k in zip(leaves, keys)]
    updates, opt_state = optimizer.update(jax.tree.unflatten(treedef, noisy), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(params, opt_state, batch, mask, keys, key):
    total = None
    for i in np.flatnonzero(mask):
      g = clip(grad(params, jax.tree.map(lambda x: x[i], batch), keys[i]))
      total = g if total is None else jax.tree.map(jnp.add, total, g)
    return finish(params, opt_state, total, key, float(mask.sum()))
  return step


def _batch_list(text: str) -> list[int]:
  try:
    sizes = sorted({int(b) for b in text.split(",") if b.strip()})
  except ValueError:
    raise argparse.ArgumentTypeError(f"--batches takes comma-separated integers, got {text!r}")
  if not sizes or sizes[0] < 1:
    raise argparse.ArgumentTypeError(f"--batches needs sizes >= 1, got {text!r}")
  return sizes


def _peak_bytes() -> int | None:
  """The first device's peak memory in use so far; None where it keeps no count (CPU)."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _out_of_memory(error: Exception) -> bool:
  text = f"{type(error).__name__}: {error}"
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def batch_memory(loss_fn, params, opt_state, optimizer, batch_sizes, *, microbatch, repeats,
                 noise, rows: list, on_row=None) -> list[dict]:
  """Seconds of the whole DP step and device memory at each padded batch size, appended
  to `rows` as each is measured."""
  rng = np.random.default_rng(3)
  for size in batch_sizes:
    row = {"batch": size}
    if any(r.get("out_of_memory") for r in rows):
      rows.append({**row, "skipped": "a smaller batch ran out of device memory"})
      continue
    if microbatch is not None and size % microbatch:
      rows.append({**row, "skipped": f"microbatch {microbatch} does not divide it"})
      continue
    batch = (jnp.asarray(rng.integers(0, 256, (size,) + SHAPE, dtype=np.uint8)),
             jnp.asarray(rng.integers(0, 10, size, dtype=np.int32)))
    mask = np.ones(size, np.float32)
    keys = jax.random.split(jax.random.key(4), size)
    step = dp_sgd.make_dp_sgd_step(loss_fn, optimizer, clip_norm=CLIP, noise_multiplier=SIGMA,
                                   expected_batch_size=float(size), adjacency="add_remove",
                                   microbatch=microbatch)
    try:
      # Compiles the per-example part; the timed steps below reuse that compilation.
      row["compiled_bytes"] = dp_sgd.step_memory_bytes(
          loss_fn, params, (batch[0][0], batch[1][0]), size, CLIP, microbatch=microbatch)
      row["seconds"] = median_seconds(
          lambda: step(params, opt_state, batch, mask, keys, noise), repeats)
      row["peak_bytes_in_use"] = _peak_bytes()
    except Exception as e:  # pylint: disable=broad-except
      if not _out_of_memory(e):
        raise
      row.update(out_of_memory=True, error=str(e).splitlines()[0][:300])
    rows.append(row)
    print(json.dumps({"dp_sgd_step_at_batch": row}), flush=True)
    if on_row is not None:
      on_row()
  return rows


def main(argv=None) -> dict:
  from vpntk_jax.models.unet import UNET_SIZES  # pylint: disable=import-outside-toplevel
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--batch", type=int)
  p.add_argument("--model", choices=("convnet", "unet"), default="convnet")
  p.add_argument("--unet-size", choices=sorted(UNET_SIZES), default=None,
                 help="UNet size (--model unet; default tiny)")
  p.add_argument("--multiplicity", type=int, default=2, help="noise draws per example (unet)")
  p.add_argument("--microbatch", type=int, default=None,
                 help="rows per per-example-gradient pass of the DP step (default: all)")
  p.add_argument("--batches", type=_batch_list, default=None,
                 help="comma-separated padded batch sizes: the DP step's seconds and peak "
                      "device memory at each (ascending)")
  p.add_argument("--json", default=None, help="also write the JSON object to this file")
  args = p.parse_args(argv)
  if args.unet_size is not None and args.model != "unet":
    p.error("--unet-size applies to --model unet only")
  if args.microbatch is not None and args.microbatch < 1:
    p.error(f"--microbatch must be >= 1, got {args.microbatch}")
  batch_size = args.batch or (64 if args.quick else 256)
  if args.microbatch is not None and batch_size % args.microbatch:
    p.error(f"--microbatch {args.microbatch} must divide the batch {batch_size}")
  repeats = 3 if args.quick else 5
  unet_size = args.unet_size or "tiny"
  params, loss_fn = (convnet() if args.model == "convnet"
                     else unet(args.multiplicity, unet_size))
  optimizer = optax.adam(3e-4)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  batch = (jnp.asarray(rng.integers(0, 256, (batch_size,) + SHAPE, dtype=np.uint8)),
           jnp.asarray(rng.integers(0, 10, batch_size, dtype=np.int32)))
  mask = np.ones(batch_size, np.float32)
  keys = jax.random.split(jax.random.key(1), batch_size)
  noise = generator(noise_rng(None))

  microbatch = args.microbatch
  dp_step = dp_sgd.make_dp_sgd_step(loss_fn, optimizer, clip_norm=CLIP, noise_multiplier=SIGMA,
                                    expected_batch_size=float(batch_size),
                                    adjacency="add_remove", microbatch=microbatch)
  plain_step = dp_sgd.make_non_private_step(loss_fn, optimizer)
  loop_step = per_example_loop_step(loss_fn, optimizer)
  lattice = dp_sgd.lattice_for(params, CLIP)
  flat_sum = dp_sgd.lattice_grad_sum(loss_fn, params, batch, mask, keys, CLIP,
                                     microbatch=microbatch)
  statistic = flat_sum.astype(np.float64) * lattice.granularity

  seconds = {
      "dp_sgd_step": median_seconds(
          lambda: dp_step(params, opt_state, batch, mask, keys, noise), repeats),
      "dp_sgd_device_sum": median_seconds(
          lambda: dp_sgd.lattice_grad_sum(loss_fn, params, batch, mask, keys, CLIP,
                                          microbatch=microbatch), repeats),
      "dp_sgd_host_noise": median_seconds(
          lambda: release.gaussian_release(statistic, sensitivity=CLIP, sigma=SIGMA, rng=noise),
          repeats),
      "non_private_step": median_seconds(
          lambda: plain_step(params, opt_state, batch, mask, keys), repeats),
      "per_example_loop_step": median_seconds(
          lambda: loop_step(params, opt_state, batch, mask, keys, jax.random.key(2)),
          max(1, repeats // 2)),
  }
  result = {
      "benchmark": "dp_sgd_step", "model": args.model, "batch": batch_size,
      "parameters": int(lattice.size), "repeats": repeats,
      "multiplicity": args.multiplicity if args.model == "unet" else None,
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__, "machine": platform.machine(),
      "seconds": seconds,
      "dp_over_non_private": seconds["dp_sgd_step"] / seconds["non_private_step"],
      "loop_over_dp": seconds["per_example_loop_step"] / seconds["dp_sgd_step"],
      "host_noise_share_of_dp": seconds["dp_sgd_host_noise"] / seconds["dp_sgd_step"],
      "unet_size": unet_size if args.model == "unet" else None,
      "microbatch": microbatch,
  }

  def write() -> None:
    # Rewritten as the results come in: a run stopped by its time cap keeps what it measured.
    if args.json:
      io_utils.write_json_atomic(args.json, result)

  if args.batches:
    result["batches"] = []
    result["memory_note"] = (
        "peak_bytes_in_use: the device's peak so far in this process (batches ascending, "
        "after the main measurements), from memory_stats(); None: the backend keeps no "
        "such count (the CPU). compiled_bytes: XLA's analysis of the compiled per-example "
        "part (temp + arguments + outputs), dp_sgd.step_memory_bytes")
    write()
    batch_memory(loss_fn, params, opt_state, optimizer, args.batches, microbatch=microbatch,
                 repeats=repeats, noise=noise, rows=result["batches"], on_row=write)
  print(json.dumps(result, indent=2))
  write()
  return result


if __name__ == "__main__":
  main()
