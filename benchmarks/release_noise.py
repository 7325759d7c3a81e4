"""The release's noise: the lattice sampler runs use against the float32 sampler it
replaced, on DP-NTK's 636,010 x 10 FashionMNIST embedding, in one process.

    python -m benchmarks.release_noise            # 636,010 x 10, 7 repeats
    python -m benchmarks.release_noise --quick    # 63,601 x 10, 3 repeats

Both add noise of the same scale to the same float64 statistic (random values of
the embedding's magnitude; timing does not depend on them); the float32 one is
JAX's normal sampler on the device (`privacy.audit.float32_gaussian_release`).
Prints one JSON object; seconds are medians after one warm-up call.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import numpy as np

from vpntk_jax.privacy import accounting
from vpntk_jax.privacy.audit import float32_gaussian_release
from vpntk_jax.privacy.noise import generator, noise_rng
from vpntk_jax.privacy.release import gaussian_release
from benchmarks.timing import median_seconds




def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  rows = 63_601 if args.quick else 636_010
  repeats = 3 if args.quick else 7
  m = 60_000
  sensitivity = accounting.mean_embedding_sensitivity(m, "replace_one")
  sigma = accounting.calibrate_gaussian(1.0, 1e-5)
  statistic = np.random.default_rng(0).normal(size=(rows, 10)) * 1e-4
  seeds = noise_rng(0)

  def lattice():
    gaussian_release(statistic, sensitivity=sensitivity, sigma=sigma,
                     rng=generator(seeds.spawn(1)[0]))

  key = jax.random.key(0)

  def float32():
    float32_gaussian_release(statistic, sensitivity * sigma, key)

  result = {
      "benchmark": "release_noise", "shape": [rows, 10], "repeats": repeats,
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__, "machine": platform.machine(),
      "lattice_s": median_seconds(lattice, repeats),
      "float32_s": median_seconds(float32, repeats),
  }
  result["lattice_over_float32"] = result["lattice_s"] / result["float32_s"]
  print(json.dumps(result, indent=2))
  return result


if __name__ == "__main__":
  main()
