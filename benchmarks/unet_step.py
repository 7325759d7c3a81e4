"""The EDM UNet's training steps, non-private and DP-SGD, per size and batch, in one
process, against the device's arithmetic limit.

    python -m benchmarks.unet_step --quick          # CPU: sizes cpu, fast, small at batch 32
    python -m benchmarks.unet_step                  # batches 128 (pretraining) and 256 (DP-SGD)
    python -m benchmarks.unet_step --sizes gpu,reference,fast --batches 256 --json F  # GPU suite

For each UNet size (`models.unet.UNET_SIZES`; default cpu, fast, small on the CPU and
fast, gpu, reference elsewhere) and each batch B it times:
* the non-private step of public pretraining (`diffusion.train.make_train_step`:
  the batch loss's gradient, Adam, EMA), at each noise multiplicity;
* the DP-SGD step of `privacy.dp_sgd` on the same batch (every row real) with the
  loss averaged over `multiplicity` noise draws inside the clip (1 and 4): its
  device part (`lattice_grad_sum`: per-example gradients, clip, exact lattice sum,
  back on the host) and the whole step (`make_dp_sgd_step`: that, the host's lattice
  Gaussian and the Adam update).
  Full DP-SGD runs the UNet with its convolutions as matmuls (`UNet.matmul_convs`,
  as runs do); on the CPU the same step with XLA's convolutions is timed beside it
  (`xla_convs`, `speedup_over_xla_convs`).
Each compiled program's FLOPs are XLA's own count (`cost_analysis()["flops"]`),
set against this device's float32 matmul rate (a large matmul timed in the same
process, at the start and at the end; the larger is used): `arithmetic_limit_s` =
flops / rate and `x_from_arithmetic_limit` = seconds / arithmetic_limit_s. The DP
step's FLOPs are those of its device part (with `--microbatch`, one microbatch's
program's count times their number: XLA does not count a scan's trips).
`dp_over_non_private`: the DP step's seconds over the non-private step's at the
same multiplicity. A (size, batch) the device cannot hold is listed under
`out_of_memory` and the rest go on.

Weights and data are random (timing does not depend on them). Seconds are medians
of `repeats` calls after one warm-up call (the compilation). The 1-, 5- and 15-minute
load averages at the start and the end are recorded: on a shared machine other
work slows every figure, the matmul rate included. Prints one JSON object; with
`--json` the file is rewritten after each (size, batch), so a run stopped by a time
cap keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.output import emit
from benchmarks.timing import matmul_flops_per_s, median_seconds, xla_flops
from vpntk_jax import io_utils
from vpntk_jax.diffusion import edm
from vpntk_jax.diffusion.train import make_train_step
from vpntk_jax.models import unet as unet_lib
from vpntk_jax.privacy import dp_sgd
from vpntk_jax.privacy.noise import generator, noise_rng
from vpntk_jax.stages.private_training import trained_subset

SHAPE = (28, 28, 1)
NUM_CLASSES = 10
CLIP = 1e-3
SIGMA = 1.0
LEARNING_RATE = 3e-4
EMA_DECAY = np.float32(0.999)
CPU_SIZES = ("cpu", "fast", "small")
ACCELERATOR_SIZES = ("fast", "gpu", "reference")


def _positive_list(text: str, name: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{name} takes comma-separated integers, got {text!r}")
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"{name} needs integers >= 1, got {text!r}")
  return list(dict.fromkeys(values))


def _sizes(text: str) -> list[str]:
  sizes = [s.strip() for s in text.split(",") if s.strip()]
  unknown = [s for s in sizes if s not in unet_lib.UNET_SIZES]
  if not sizes or unknown:
    raise argparse.ArgumentTypeError(
        f"--sizes takes names from {sorted(unet_lib.UNET_SIZES)}, got {text!r}")
  return list(dict.fromkeys(sizes))


def add_arithmetic_limits(steps: list[dict], rate: float) -> None:
  """Sets each entry's time at this matmul rate (FLOP/s) and its seconds' ratio to it."""
  for row in steps:
    for entry in [*row["non_private"].values(), *row["dp_sgd"].values()]:
      limit = entry["xla_gflop"] * 1e9 / rate
      entry.update(arithmetic_limit_s=limit, x_from_arithmetic_limit=entry["seconds"] / limit)
      if "device_part_seconds" in entry:
        entry["device_part_x_from_arithmetic_limit"] = entry["device_part_seconds"] / limit


def non_private_step(apply_fn, params, config, images, labels, multiplicity: int,
                     repeats: int) -> dict:
  """Public pretraining's step on this batch: seconds, images/s and FLOPs."""
  optimizer = optax.adam(LEARNING_RATE)
  step = make_train_step(apply_fn, optimizer, multiplicity=multiplicity,
                         num_classes=NUM_CLASSES, label_dropout=config.label_dropout)
  args = (params, optimizer.init(params), params, images, labels, jax.random.key(1), EMA_DECAY)
  flops = xla_flops(step.lower(*args).compile())  # the calls below reuse this compilation
  seconds = median_seconds(lambda: step(*args), repeats)
  return {"seconds": seconds, "images_per_s": images.shape[0] / seconds, "xla_gflop": flops / 1e9}


def dp_sgd_step(apply_fn, params, config, images, labels, multiplicity: int, repeats: int,
                noise: np.random.Generator, microbatch: int | None = None,
                trainable: str = "all") -> dict:
  """privacy.dp_sgd's step on this batch (all rows real): its device part and the whole;
  `trainable` as `--dp-sgd-trainable` (the subset's gradients only, the rest frozen)."""
  def full_loss(params, example, key):
    image, label = example
    return edm.per_example_loss(params, apply_fn, image, label, key,
                                multiplicity=multiplicity, num_classes=NUM_CLASSES,
                                label_dropout=config.label_dropout)
  selected = None if trainable == "all" else unet_lib.TRAINABLE[trainable]
  loss_fn, params, _ = trained_subset(full_loss, params, selected)
  batch_size = images.shape[0]
  optimizer = optax.adam(LEARNING_RATE)
  opt_state = optimizer.init(params)
  batch = (images, labels)
  mask = np.ones(batch_size, np.float32)
  keys = jax.random.split(jax.random.key(2), batch_size)
  example = (images[0], labels[0])
  # The calls below reuse this compilation.
  compiled = dp_sgd.compiled_lattice_sum(loss_fn, params, example, batch_size, CLIP,
                                         microbatch=microbatch)
  if microbatch is None:
    flops = xla_flops(compiled)
  else:  # XLA does not count a scan's trips: one microbatch's program, times their number
    flops = xla_flops(dp_sgd.compiled_lattice_sum(loss_fn, params, example, microbatch,
                                                  CLIP)) * (batch_size // microbatch)
  device_s = median_seconds(
      lambda: dp_sgd.lattice_grad_sum(loss_fn, params, batch, mask, keys, CLIP,
                                      microbatch=microbatch), repeats)
  step = dp_sgd.make_dp_sgd_step(loss_fn, optimizer, clip_norm=CLIP, noise_multiplier=SIGMA,
                                 expected_batch_size=float(batch_size), adjacency="add_remove",
                                 microbatch=microbatch)
  step_s = median_seconds(lambda: step(params, opt_state, batch, mask, keys, noise), repeats)
  return {"seconds": step_s, "images_per_s": batch_size / step_s, "xla_gflop": flops / 1e9,
          "device_part_seconds": device_s, "host_share": 1.0 - device_s / step_s}


def bench_size(size: str, batch_size: int, multiplicities: list[int], repeats: int,
               noise: np.random.Generator, microbatch: int | None = None,
               trainable: tuple[str, ...] = ("all",)) -> dict:
  config = unet_lib.unet_config(size, SHAPE, NUM_CLASSES)
  model = unet_lib.UNet(config)
  params = unet_lib.init_params(model, jax.random.key(0))
  apply_fn = unet_lib.make_apply_fn(model)
  rng = np.random.default_rng(batch_size)
  images = jnp.asarray(rng.integers(0, 256, (batch_size,) + SHAPE, dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size, dtype=np.int32))
  row = {"size": size, "parameters": int(unet_lib.count_params(params)), "batch": batch_size,
         "non_private": {}, "dp_sgd": {}}
  # What runs use for full DP-SGD (diffusion_recipe.unet_dp_sgd): convolutions as matmuls.
  matmul_apply_fn = unet_lib.make_apply_fn(model.clone(matmul_convs=True))
  for m in multiplicities:
    plain = non_private_step(apply_fn, params, config, images, labels, m, repeats)
    row["non_private"][str(m)] = plain
    for subset in trainable:
      dp = dp_sgd_step(matmul_apply_fn if subset == "all" else apply_fn, params, config,
                       images, labels, m, repeats, noise, microbatch, trainable=subset)
      if subset == "all" and jax.default_backend() == "cpu":
        # The straightforward lowering, XLA's convolutions (elsewhere both are XLA's).
        xla = dp_sgd_step(apply_fn, params, config, images, labels, m, repeats, noise,
                          microbatch)
        dp["xla_convs"] = {k: xla[k] for k in ("seconds", "images_per_s", "xla_gflop")}
        dp["speedup_over_xla_convs"] = xla["seconds"] / dp["seconds"]
      dp["dp_over_non_private"] = dp["seconds"] / plain["seconds"]
      dp["device_part_over_non_private"] = dp["device_part_seconds"] / plain["seconds"]
      # "all" keeps its historical key; a subset is keyed "m/subset".
      row["dp_sgd"][str(m) if subset == "all" else f"{m}/{subset}"] = dp
  return row


def _out_of_memory(error: Exception) -> bool:
  text = f"{type(error).__name__}: {error}"
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--quick", action="store_true",
                 help="batch 32, 2 repeats (unless --batches / --repeats say otherwise)")
  p.add_argument("--sizes", type=_sizes, default=None,
                 help="comma-separated UNet sizes (default: cpu,fast,small on the CPU, "
                      "fast,gpu,reference elsewhere)")
  p.add_argument("--batches", type=lambda t: _positive_list(t, "--batches"), default=None,
                 help="comma-separated batch sizes (default 128,256; --quick 32)")
  p.add_argument("--multiplicities", type=lambda t: _positive_list(t, "--multiplicities"),
                 default=[1, 4], help="noise draws per example (default 1,4)")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per figure "
                 "(default 3; --quick 2)")
  p.add_argument("--microbatch", type=int, default=None,
                 help="rows per per-example-gradient pass of the DP step (default: all)")
  p.add_argument("--matmul-size", type=int, default=None,
                 help="side of the square matmul that measures the rate (default 2048 on "
                      "the CPU, 8192 elsewhere)")
  p.add_argument("--trainable", default="all",
                 help="comma-separated DP-SGD parameter subsets (--dp-sgd-trainable): all, "
                      "conditioning (default all)")
  p.add_argument("--json", default=None, help="also write the JSON object to this file")
  args = p.parse_args(argv)
  trainable = tuple(args.trainable.split(","))
  if any(t not in unet_lib.TRAINABLE for t in trainable):
    p.error(f"--trainable takes {', '.join(unet_lib.TRAINABLE)}, got {args.trainable!r}")
  if args.repeats is not None and args.repeats < 1:
    p.error(f"--repeats must be >= 1, got {args.repeats}")
  if args.microbatch is not None and args.microbatch < 1:
    p.error(f"--microbatch must be >= 1, got {args.microbatch}")
  cpu = jax.default_backend() == "cpu"
  sizes = args.sizes or list(CPU_SIZES if cpu else ACCELERATOR_SIZES)
  batches = args.batches or ([32] if args.quick else [128, 256])
  repeats = args.repeats or (2 if args.quick else 3)
  if args.microbatch is not None and any(b % args.microbatch for b in batches):
    p.error(f"--microbatch {args.microbatch} must divide every batch {batches}")
  matmul_size = args.matmul_size or (2048 if cpu else 8192)
  load_start = _load()
  rate_start = matmul_flops_per_s(matmul_size)
  result = {
      "benchmark": "unet_step", "image_shape": list(SHAPE), "num_classes": NUM_CLASSES,
      "sizes": sizes, "batches": batches, "multiplicities": args.multiplicities,
      "repeats": repeats, "microbatch": args.microbatch, "trainable": list(trainable), "device": jax.devices()[0].device_kind,
      "backend": jax.default_backend(), "devices": jax.device_count(), "jax": jax.__version__,
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "matmul_size": matmul_size, "matmul_gflop_per_s_start": rate_start / 1e9,
      "load_average_start": load_start,
      "load_note": "1-, 5- and 15-minute load averages (os.getloadavg); above the core count, "
                   "other work shared the CPU and slowed every figure",
      "steps": [], "out_of_memory": [],
  }

  def write() -> None:
    # Rewritten as the results come in: a run stopped by its time cap keeps what it measured.
    if args.json:
      io_utils.write_json_atomic(args.json, result)

  noise = generator(noise_rng(None))
  write()
  for size in sizes:
    for batch_size in batches:
      try:
        row = bench_size(size, batch_size, args.multiplicities, repeats, noise, args.microbatch,
                         trainable)
      except Exception as e:  # pylint: disable=broad-except
        if not _out_of_memory(e):
          raise
        result["out_of_memory"].append({"size": size, "batch": batch_size,
                                        "error": str(e).splitlines()[0][:300]})
        write()
        continue
      result["steps"].append(row)
      add_arithmetic_limits(result["steps"], rate_start)
      print(json.dumps({"unet_step": {k: row[k] for k in ("size", "batch")},
                        "seconds": {f"{kind}_m{m}": row[kind][m]["seconds"]
                                    for kind in ("non_private", "dp_sgd")
                                    for m in row[kind]}}), flush=True)
      write()
  rate_end = matmul_flops_per_s(matmul_size)
  rate = max(rate_start, rate_end)  # the figures against the better of the two
  add_arithmetic_limits(result["steps"], rate)
  result.update(matmul_gflop_per_s_end=rate_end / 1e9, matmul_gflop_per_s=rate / 1e9,
                load_average_end=_load())
  if args.json:
    write()
  emit(result, None)
  return result


if __name__ == "__main__":
  main()
