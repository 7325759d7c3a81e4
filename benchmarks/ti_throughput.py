"""Per-image textual inversion (`diffusion.inversion.invert_images`): the vmapped
chunk against a per-image Python loop (the same jitted inversion called on one
image at a time), on the same public UNet and images, in one process.

    python -m benchmarks.ti_throughput                  # tiny UNet, 64 images, 20 steps
    python -m benchmarks.ti_throughput --unet-size cpu --images 128 --json out.json

Both produce the same tokens (checked: max abs difference printed). Weights and
images are random (timing does not depend on them). Seconds are medians of
`--repeats` calls after one warm-up call that compiles. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import platform

import jax
import numpy as np

from vpntk_jax.diffusion import inversion
from vpntk_jax.models import unet
from benchmarks.output import emit
from benchmarks.timing import median_seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--unet-size", default="tiny")
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--multiplicity", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json")
  args = parser.parse_args()
  model = unet.UNet(unet.unet_config(args.unet_size, (28, 28, 1), 10))
  params = unet.init_params(model, jax.random.key(0))
  tokens = np.asarray(unet.label_table(params))
  apply_fn = unet.token_apply_fn(model)
  images = np.random.default_rng(0).integers(0, 256, (args.images, 28, 28, 1), np.uint8)
  keys = jax.random.split(jax.random.key(0), args.images)
  settings = dict(steps=args.steps, learning_rate=0.05,
                  multiplicity=args.multiplicity)

  def vectorised():
    return inversion.invert_images(apply_fn, params, tokens[-1], tokens[:-1].mean(0), images,
                                   keys, chunk_size=args.images, **settings)

  def loop():
    return np.concatenate([
        inversion.invert_images(apply_fn, params, tokens[-1], tokens[:-1].mean(0),
                                images[i:i + 1], keys[i:i + 1], chunk_size=1, **settings)
        for i in range(args.images)])

  fast, slow = median_seconds(vectorised, args.repeats), median_seconds(loop, args.repeats)
  result = {
      "benchmark": "ti_throughput", "unet_size": args.unet_size,
      "unet_params": unet.count_params(params), "images": args.images, "steps": args.steps,
      "multiplicity": args.multiplicity,
      "vectorised_seconds": round(fast, 3), "loop_seconds": round(slow, 3),
      "vectorised_images_per_s": round(args.images / fast, 2),
      "loop_images_per_s": round(args.images / slow, 2),
      "speedup": round(slow / fast, 2),
      "max_abs_token_difference": float(np.max(np.abs(vectorised() - loop()))),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__, "machine": platform.machine(),
  }
  emit(result, args.json)


if __name__ == "__main__":
  main()
