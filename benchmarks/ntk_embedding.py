"""Fast NTK embedding vs the per-example paths, in one process, on the same data.

    python -m benchmarks.ntk_embedding --quick   # < 1 min on a 2-core CPU
    python -m benchmarks.ntk_embedding           # the README numbers
    python -m benchmarks.ntk_embedding --batches 200,500,1000,2000,5000 --json F  # GPU suite

Prints one JSON object. Paths compared:
* embedding of real images: fast (activations/deltas, class-grouped) vs exact
  per-example features (vmap of grad, chunked) vs a per-example Python loop
  (one grad per example, as the PyTorch reference does);
* one generator step at batch B: the fast objective (inner products with the
  target, the embedding never formed) vs the same features with the embedding
  formed vs vmap-of-grad per-example features inside the loss (all
  differentiated into the generator), plus the fast step with XLA convolutions
  instead of the dense upsampling layers;
* the private sum over the whole set (60k): as runs do it (chunk sums queued
  on the device), reading each chunk's sum at once, and on images already on
  the device.

The step's arithmetic, estimated by hand for the default network (784 -> 800
-> 10) and generator at batch B (multiply-adds x 2; B = 500 in brackets):
  NTK features through inner products: the forward x W1, its backward to x,
  the projection a_c T_c of every example onto its class's target and that
  product's backward: 4 x 2 B 784 800                          [2.5 GFLOP]
  generator: two dense upsample+conv matmuls (784 x 1568, 1568 x 784):
  forward, input gradient and matrix gradient, 6 x 2 B 1.23M; the dense
  layers (15->200->784) fwd+bwd 0.5                           [7.9 GFLOP]
  total                                                       [~10.4 GFLOP]
The JSON has XLA's own count of the compiled step (`xla_gflop`), this device's
float32 matmul rate (`gemm_gflop_per_s`, a 2048^3 matmul), the time that count
takes at that rate (`arithmetic_limit_ms`) and the measured step's ratio to it.
Timings are medians of repeated runs after one warm-up (compile) call.
Memory: the process's peak resident set (max RSS) after each phase. The fast
path runs first, so its figure is its own peak; later figures include it.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.output import emit
from vpntk_jax import arrays, training
from vpntk_jax.blocks import TrainConfig
from vpntk_jax.data import load_dataset
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.models.generator import ConvCondGenerator


def _time(fn, *args, repeats: int) -> float:
  """Median seconds per call, after one warm-up call (compilation excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
  try:
    ds = load_dataset("fashion_mnist", "train")
    return ds.images[:n], ds.labels[:n]
  except Exception:  # pylint: disable=broad-except
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 28, 28, 1), np.uint8), np.arange(n) % 10


def bench_embedding(network, params, n: int, loop_n: int, repeats: int) -> dict:
  images, labels = _images(n)
  x = np.asarray(ntk.flatten_images(images))

  def fast():
    return ntk.private_embedding_sum(network, params, images, labels, 10, chunk_size=1024)

  def per_example_vmap():
    return ntk.exact_labelled_embedding(network, params, x, labels, 10, chunk_size=100)

  grad_one = jax.jit(lambda xi: ntk.per_example_features(network, params, xi[None])[0])

  def per_example_loop():
    total = np.zeros((ntk.num_params(params), 10))
    for i in range(loop_n):
      phi = np.asarray(grad_one(x[i]), np.float64)
      total[:, labels[i]] += phi / np.linalg.norm(phi)
    return total

  t_fast = _time(fast, repeats=repeats)
  rss_fast = _peak_rss_mb()
  t_vmap = _time(per_example_vmap, repeats=max(1, repeats // 2))
  rss_vmap = _peak_rss_mb()
  t_loop = _time(per_example_loop, repeats=1) * n / loop_n  # extrapolated to n
  return {"n": n, "fast_s": t_fast, "per_example_vmap_s": t_vmap,
          "peak_rss_mb_after_fast": rss_fast, "peak_rss_mb_after_vmap": rss_vmap,
          "per_example_loop_s_extrapolated": t_loop, "loop_examples_timed": loop_n,
          "fast_examples_per_s": n / t_fast,
          "speedup_vs_vmap": t_vmap / t_fast, "speedup_vs_loop": t_loop / t_fast}


def _gemm_flops_per_s(size: int = 2048) -> float:
  """This device's float32 matmul rate, the yardstick of the step's arithmetic."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  return 2 * size ** 3 / _time(matmul, a, repeats=5)


def _arithmetic(step, state, seconds: float) -> dict:
  """The step's FLOPs as XLA counts them, and its time against the matmul rate."""
  cost = jax.jit(step).lower(state).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops, rate = float(cost.get("flops", float("nan"))), _gemm_flops_per_s()
  return {"xla_gflop": flops / 1e9, "gemm_gflop_per_s": rate / 1e9,
          "arithmetic_limit_ms": 1e3 * flops / rate,
          "ratio_to_arithmetic_limit": seconds * rate / flops}


def bench_step(network, params, batch: int, repeats: int, per_example: bool = True) -> dict:
  num_classes, per_class = 10, batch // 10
  generator = ConvCondGenerator(num_classes)
  config = TrainConfig(batch_size=batch)
  optimizer = training.make_optimizer(config)
  state = training.init_state(jax.random.key(0), generator, optimizer, config.latent_dim)
  target = jax.tree.map(lambda p: jnp.zeros(p.shape + (num_classes,)), params)

  def exact_mean(x_grouped):
    d = x_grouped.shape[-1]
    phi = ntk.per_example_features(network, params, x_grouped.reshape(-1, d))
    phi = phi * ntk.normalising_scale(jnp.sum(jnp.square(phi), 1))[:, None]
    onehot = jax.nn.one_hot(jnp.repeat(jnp.arange(num_classes), per_class), num_classes)
    mean = phi.T @ onehot / (num_classes * per_class)
    return ntk.matrix_to_embedding(mean, target)

  def step_fn(features, gen):
    return training.make_train_step(gen, training.matching_objective(features), target,
                                    optimizer, num_classes=num_classes, per_class=per_class,
                                    latent_dim=config.latent_dim, base_key=jax.random.key(1))

  fast = NTKFeatureMap(network, input_dim=params[0]["w"].shape[0])
  # The same fast features, but the loss formed from the materialised embedding.
  materialised = types.SimpleNamespace(synthetic_mean=fast.synthetic_mean)
  exact = types.SimpleNamespace(synthetic_mean=exact_mean)
  run = lambda f: (lambda s: f(s)[1])
  fast_step = step_fn(fast, generator)
  t_fast = _time(run(fast_step), state, repeats=repeats)
  rss_fast = _peak_rss_mb()
  t_materialised = _time(run(step_fn(materialised, generator)), state, repeats=repeats)
  vmap = {}
  if per_example:
    t_vmap = _time(run(step_fn(exact, generator)), state, repeats=max(1, repeats // 3))
    vmap = {"per_example_vmap_ms": 1e3 * t_vmap, "speedup_vs_vmap": t_vmap / t_fast,
            "peak_rss_mb_after_vmap": _peak_rss_mb()}
  conv_gen = ConvCondGenerator(num_classes, force_conv=True)
  t_fast_conv = _time(run(step_fn(fast, conv_gen)), state, repeats=repeats)
  return {"batch": batch, "fast_ms": 1e3 * t_fast,
          "materialised_embedding_ms": 1e3 * t_materialised,
          "fast_with_conv_generator_ms": 1e3 * t_fast_conv,
          "peak_rss_mb_after_fast": rss_fast, **vmap,
          "speedup_vs_materialised": t_materialised / t_fast,
          "dense_upsample_conv_speedup": t_fast_conv / t_fast,
          **_arithmetic(fast_step, state, t_fast)}


def bench_embedding_60k(network, params, n: int, repeats: int) -> dict:
  """The private sum over n images: as runs do it (chunk sums queued on the device),
  reading each chunk's sum at once, and on images already on the device (the
  limit a run's transfers approach)."""
  images, labels = _images(n)
  run = lambda pending: (lambda: ntk.private_embedding_sum(network, params, images, labels, 10,
                                                           pending_bytes=pending))
  chunk = 2048
  xs, masks, classes = [], [], []
  for c in range(10):
    rows = np.flatnonzero(labels == c)
    for start in range(0, len(rows), chunk):
      x, mask = arrays.padded_chunk(images, rows[start:start + chunk], chunk)
      xs.append(x.reshape(chunk, -1)), masks.append(mask), classes.append(c)
  resident = jax.device_put((np.stack(xs), np.stack(masks), np.asarray(classes)))

  @jax.jit
  def on_device(params, xs, masks, classes):
    def add(total, inputs):
      x, mask, c = inputs
      part = ntk._chunk_sum(network, params, x.astype(jnp.float32) / 255.0, mask)  # pylint: disable=protected-access
      onehot = jax.nn.one_hot(c, 10)
      return jax.tree.map(lambda t, p: t + p[..., None] * onehot, total, part), None
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape + (10,)), params)
    return jax.lax.scan(add, zeros, (xs, masks, classes))[0]

  return {"n": n, "queued_s": _time(run(ntk.PENDING_SUM_BYTES), repeats=repeats),
          "read_each_chunk_s": _time(run(0), repeats=repeats),
          "on_device_s": _time(on_device, params, *resident, repeats=repeats)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="small sizes, under a minute on CPU")
  parser.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")],
                      default=None, help="generator step batches (default 200,500,1000)")
  parser.add_argument("--per-example-max-batch", type=int, default=1000,
                      help="the per-example (vmap) step only up to this batch: its memory "
                      "grows as batch x parameters")
  parser.add_argument("--embedding-n", type=int, default=None,
                      help="images of the whole-set private sum (default 60000; 0 skips it)")
  parser.add_argument("--embedding-examples", type=int, default=None,
                      help="images of the fast-vs-per-example embedding (default 4000; "
                      "--quick 400); the loop times one in 40 of them")
  parser.add_argument("--json", help="also write the JSON object here")
  args = parser.parse_args()
  network = ntk.NTKNetwork()  # the DP-NTK FashionMNIST network, 636,010 parameters
  params = ntk.init_params(jax.random.key(0), network, 784)
  examples = args.embedding_examples or (400 if args.quick else 4000)
  emb = bench_embedding(network, params, n=examples, loop_n=max(1, examples // 40),
                        repeats=2 if args.quick else 3)
  if args.quick:
    batches, repeats, default_n = args.batches or [200], 2, 0
  else:
    batches, repeats, default_n = args.batches or [200, 500, 1000], 5, 60000
  steps = [bench_step(network, params, batch=b, repeats=repeats,
                      per_example=b <= args.per_example_max_batch) for b in batches]
  n = default_n if args.embedding_n is None else args.embedding_n
  whole = bench_embedding_60k(network, params, n, repeats=3) if n else None
  compared = [s for s in steps if "speedup_vs_vmap" in s]
  result = {
      "benchmark": "ntk_embedding", "quick": args.quick,
      "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "python": platform.python_version(),
      "num_params": ntk.num_params(params),
      "embedding": emb, "step": steps,
      "embedding_60k_s": whole["queued_s"] if whole else None,
      "whole_set_embedding": whole,
      "speedup_embedding_vs_per_example": emb["speedup_vs_vmap"],
      "speedup_step_vs_per_example": compared[-1]["speedup_vs_vmap"] if compared else None,
  }
  emit(result, args.json)


if __name__ == "__main__":
  main()
