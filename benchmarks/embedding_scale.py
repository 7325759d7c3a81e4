"""Streams a large private set through the fast embedding in bounded memory.

    python -m benchmarks.embedding_scale --n 200000 --size 64    # CelebA-sized
    python -m benchmarks.embedding_scale --n 60000 --size 28 --channels 1

Images are random uint8 (the point is memory and time, not the numbers; no
CelebA ships offline). Network: the DP-NTK CelebA shape on raw pixels,
(3000, relu, 200, layernorm, 1) with 2 classes, unless --layers is given.
Prints JSON: seconds, examples/s, peak RSS, and the bytes the images and the
embedding themselves take, so the working memory on top is visible.
"""

import argparse
import json
import resource
import time

import jax
import numpy as np

from vpntk_jax.features import ntk


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=200000)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--layers", default="3000,relu,200,layernorm,1")
  args = parser.parse_args()
  layers = tuple(int(l) if l.isdigit() else l for l in args.layers.split(","))
  network = ntk.NTKNetwork(layers)
  dim = args.size * args.size * args.channels
  params = ntk.init_params(jax.random.key(0), network, dim)
  rng = np.random.default_rng(0)
  images = np.empty((args.n, args.size, args.size, args.channels), np.uint8)
  for start in range(0, args.n, 10000):  # fill without a float temporary
    images[start:start + 10000] = rng.integers(0, 256, images[start:start + 10000].shape,
                                               dtype=np.uint8)
  labels = rng.integers(0, args.classes, args.n)
  t0 = time.perf_counter()
  total = ntk.private_embedding_sum(network, params, images, labels, args.classes,
                                    chunk_size=args.chunk)
  jax.block_until_ready(total)
  seconds = time.perf_counter() - t0
  print(json.dumps({
      "benchmark": "embedding_scale", "n": args.n, "image_shape": images.shape[1:],
      "layers": args.layers, "num_params": ntk.num_params(params), "classes": args.classes,
      "chunk": args.chunk, "seconds": seconds, "examples_per_s": args.n / seconds,
      "images_mb": images.nbytes / 2**20,
      "embedding_mb_float32": ntk.num_params(params) * args.classes * 4 / 2**20,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "device": jax.devices()[0].device_kind,
  }, indent=2))


if __name__ == "__main__":
  main()
