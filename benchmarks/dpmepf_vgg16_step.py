"""DP-MEPF's generator step with a VGG public directory, per batch, against the device's
arithmetic limit; the fast path runs use beside the straightforward one, in one process.

    python -m benchmarks.dpmepf_vgg16_step --public-model public/vgg16
    python -m benchmarks.dpmepf_vgg16_step --public-model public/vgg16 --batches 100 --repeats 2

For each batch B (class-balanced over 10 classes; the generator makes 28x28 grey
images, which the VGG repeats to RGB and resizes to 32x32) it times:
* `step`: the whole generator step of `training.make_train_step` (the generator,
  the features of its batch, the MMD to a target, the gradient back through the
  frozen extractor to the images and on into the generator, Adam);
* `forward`: the labelled mean of phi(x) = [u, w u^2] over a fixed batch of images
  (`PerceptualFeatureMap.synthetic_mean`), the extractor's forward pass;
* `forward_backward`: the MMD to the target and its gradient with respect to those
  images, the extractor's forward and backward passes;
* `release_per_image`: the private side, `private_sum` over a few of its chunks of
  random uint8 images (forward only), per image.
Each on two paths with the same result up to float rounding:
* `fast` (what runs use): the convs take a few MB of shifted copies at a time
  (`layers.conv3x3_same`'s chunks, kept in cache) and the class means are formed
  as s-weighted class sums of e and e^2 (`perceptual.class_moment_mean`);
* `straightforward`: every conv's copies for the whole batch at once
  (`conv_chunk_bytes=None`) and the per-example phi written out, then averaged by
  class (`labelled.labelled_feature_mean(per_example_moments(...))`).
`max_relative_difference` compares the two paths' forward results and gradients.

FLOPs are XLA's own count (`cost_analysis()["flops"]`) of the straightforward
programs: the fast ones loop over chunks, and XLA counts one trip of a loop; both
do the same arithmetic. `arithmetic_limit_s` = flops / the float32 matmul rate of a
`--matmul-size` square matmul timed in this process (at the start and at the end;
the larger is used); `x_from_arithmetic_limit` = seconds / arithmetic_limit_s.
Seconds are medians of `repeats` calls after one warm-up call (the compilation),
the two paths timed in alternation so that other work on a shared CPU slows both
alike. The 1-, 5- and 15-minute load averages at the start and the end are recorded.
Weights of the generator are random (timing does not depend on them). Prints one
JSON object; with `--json` the file is rewritten after each batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.output import emit
from benchmarks.timing import matmul_flops_per_s, median_seconds_each, xla_flops
from vpntk_jax import io_utils, public, training
from vpntk_jax.features import labelled
from vpntk_jax.features.perceptual import PerceptualFeatureMap, per_example_moments
from vpntk_jax.models.generator import ConvCondGenerator

NUM_CLASSES = 10
LATENT_DIM = 5
PATHS = ("fast", "straightforward")


@dataclasses.dataclass(frozen=True, eq=False)
class _PerExampleMean(PerceptualFeatureMap):
  """DP-MEPF's features with the class means taken over the per-example phi."""

  def synthetic_mean(self, x_grouped: jax.Array) -> dict:
    num_classes, n = x_grouped.shape[:2]
    phi = per_example_moments(self.extractor, self.extractor_params,
                              x_grouped.reshape((num_classes * n,) + x_grouped.shape[2:]),
                              tuple(self.image_shape), float(self.second_moment_weight))
    return {"mepf": labelled.labelled_feature_mean(phi, num_classes)}


def feature_maps(models, image_shape) -> dict:
  """The fast map (as runs build it) and the straightforward one, same weights."""
  slow_extractor = models.extractor.clone(conv_chunk_bytes=None)
  return {"fast": PerceptualFeatureMap(models.extractor, models.extractor_params, image_shape),
          "straightforward": _PerExampleMean(slow_extractor, models.extractor_params,
                                             image_shape)}


def _relative(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def bench_batch(maps: dict, image_shape, batch: int, repeats: int,
                release_images: int) -> dict:
  per_class = batch // NUM_CLASSES
  size = int(np.prod(image_shape))
  images = jax.random.uniform(jax.random.key(3), (NUM_CLASSES, per_class, size))
  target = jax.tree.map(lambda t: jnp.full(t.shape, 1e-3, jnp.float32),
                        maps["fast"].template(NUM_CLASSES))
  sampler = training.GeneratorSampler(ConvCondGenerator(NUM_CLASSES, tuple(image_shape)))
  optimizer = sampler.optimizer(optax.adam(1e-3))
  state = training.init_state(jax.random.key(0), sampler, optimizer, LATENT_DIM)
  programs = {}
  for path, fmap in maps.items():
    mean = lambda x, fmap=fmap: fmap.synthetic_mean(x)["mepf"]
    objective = training.matching_objective(fmap, training.embedding_loss("mmd"))
    step = training.make_train_step(sampler, objective, target, optimizer,
                                    num_classes=NUM_CLASSES, per_class=per_class,
                                    latent_dim=LATENT_DIM, base_key=jax.random.key(1))
    programs[path] = {
        "step": step,  # jitted; returns (state, loss)
        "forward": jax.jit(mean),
        "forward_backward": jax.jit(jax.value_and_grad(
            lambda x, t, objective=objective: objective.loss(t, x))),
    }
  args = {"step": (state,), "forward": (images,), "forward_backward": (images, target)}
  # jax.jit of the step's closure: the same program with its target a constant.
  flops = {name: xla_flops(jax.jit(programs["straightforward"][name]).lower(*args[name])
                           .compile()) for name in args}
  seconds = {path: {} for path in PATHS}
  for name in args:
    timed = median_seconds_each(
        {path: (lambda p=programs[path][name]: p(*args[name])) for path in PATHS}, repeats)
    for path in PATHS:
      seconds[path][f"{name}_s"] = timed[path]
  # The paths' results, compared (the programs above are compiled already).
  fwd = {p: programs[p]["forward"](images) for p in PATHS}
  grads = {p: programs[p]["forward_backward"](images, target)[1] for p in PATHS}
  row = {"batch": batch, "xla_gflop": {name: flops[name] / 1e9 for name in args},
         "max_relative_difference": {
             "forward": _relative(fwd["fast"], fwd["straightforward"]),
             "gradient": _relative(grads["fast"], grads["straightforward"])},
         **seconds}
  for path in PATHS:
    s = seconds[path]
    s["backward_s"] = s["forward_backward_s"] - s["forward_s"]
    s["generator_and_adam_s"] = s["step_s"] - s["forward_backward_s"]
  row["speedup"] = {name: seconds["straightforward"][f"{name}_s"] / seconds["fast"][f"{name}_s"]
                    for name in args}
  if release_images:
    row["release_per_image_s"] = release_seconds(maps, image_shape, release_images, repeats)
  return row


def release_seconds(maps: dict, image_shape, num_images: int, repeats: int) -> dict:
  """Seconds per image of each path's private sum (forward only, its own chunk size)."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (num_images,) + tuple(image_shape), dtype=np.uint8)
  labels = (np.arange(num_images) % NUM_CLASSES).astype(np.int32)
  timed = median_seconds_each(
      {p: (lambda fmap=maps[p]: fmap.private_sum(images, labels, NUM_CLASSES)["mepf"])
       for p in PATHS}, repeats)
  return {p: timed[p] / num_images for p in PATHS}


def add_arithmetic_limits(rows: list[dict], rate: float) -> None:
  """Sets each row's time at this matmul rate (FLOP/s) and each path's ratio to it."""
  for row in rows:
    limit = {name: gflop * 1e9 / rate for name, gflop in row["xla_gflop"].items()}
    row["arithmetic_limit_s"] = limit
    row["x_from_arithmetic_limit"] = {
        path: {name: row[path][f"{name}_s"] / limit[name] for name in limit} for path in PATHS}


def _load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def _batches(text: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"--batches takes comma-separated integers, got {text!r}")
  if not values or any(v < NUM_CLASSES or v % NUM_CLASSES for v in values):
    raise argparse.ArgumentTypeError(
        f"--batches needs multiples of {NUM_CLASSES} (class-balanced), got {text!r}")
  return list(dict.fromkeys(values))


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--public-model", required=True,
                 help="a VGG public directory (`vpntk public vgg16`)")
  p.add_argument("--batches", type=_batches, default=[100, 250, 500],
                 help="comma-separated synthetic batch sizes (default 100,250,500)")
  p.add_argument("--image-size", type=int, default=28,
                 help="side of the generator's grey images (default 28, FashionMNIST's)")
  p.add_argument("--repeats", type=int, default=3, help="timed calls per figure (default 3)")
  p.add_argument("--release-images", type=int, default=None,
                 help="random images the private sum is timed on (default: two of its "
                      "chunks; 0: not timed)")
  p.add_argument("--matmul-size", type=int, default=2048,
                 help="side of the square matmul that measures the rate (default 2048)")
  p.add_argument("--json", default=None, help="also write the JSON object to this file")
  args = p.parse_args(argv)
  if args.repeats < 1:
    p.error(f"--repeats must be >= 1, got {args.repeats}")
  models = public.load_public(args.public_model)
  if models.spec["extractor"]["kind"] not in ("vgg16", "vgg19"):
    p.error(f"{args.public_model} holds a {models.spec['extractor']['kind']} extractor, "
            f"not a VGG (`vpntk public vgg16`)")
  image_shape = (args.image_size, args.image_size, 1)
  maps = feature_maps(models, image_shape)
  release_images = args.release_images
  if release_images is None:
    release_images = 2 * int(np.clip(
        2**26 // maps["fast"].template(1)["mepf"].shape[0], 16, 1024))
  load_start = _load()
  rate_start = matmul_flops_per_s(args.matmul_size)
  result = {
      "benchmark": "dpmepf_vgg16_step", "public_model": os.path.abspath(args.public_model),
      "extractor": models.extractor.spec(), "image_shape": list(image_shape),
      "features_per_image": int(maps["fast"].template(1)["mepf"].shape[0] // 2),
      "num_classes": NUM_CLASSES, "batches": args.batches, "repeats": args.repeats,
      "release_images": release_images, "device": jax.devices()[0].device_kind,
      "backend": jax.default_backend(), "jax": jax.__version__,
      "machine": platform.machine(), "cpu_count": os.cpu_count(),
      "matmul_size": args.matmul_size, "matmul_gflop_per_s_start": rate_start / 1e9,
      "load_average_start": load_start,
      "load_note": "1-, 5- and 15-minute load averages (os.getloadavg); above the core count, "
                   "other work shared the CPU and slowed every figure",
      "steps": [],
  }

  def write() -> None:
    if args.json:
      io_utils.write_json_atomic(args.json, result)

  write()
  for batch in args.batches:
    row = bench_batch(maps, image_shape, batch, args.repeats,
                      release_images if batch == args.batches[0] else 0)
    result["steps"].append(row)
    add_arithmetic_limits(result["steps"], rate_start)
    print(json.dumps({"dpmepf_vgg16_step": batch,
                      "step_s": {path: row[path]["step_s"] for path in PATHS}}), flush=True)
    write()
  rate_end = matmul_flops_per_s(args.matmul_size)
  rate = max(rate_start, rate_end)  # the figures against the better of the two
  add_arithmetic_limits(result["steps"], rate)
  result.update(matmul_gflop_per_s_end=rate_end / 1e9, matmul_gflop_per_s=rate / 1e9,
                load_average_end=_load())
  write()
  emit(result, None)
  return result


if __name__ == "__main__":
  main()
