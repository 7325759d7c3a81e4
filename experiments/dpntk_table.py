"""The README's DP-NTK table: FashionMNIST, epsilon 0.2 / 1 / 10, several seeds.

    python -m experiments.dpntk_table                      # 3 seeds x 3 epsilons
    python -m experiments.dpntk_table --epsilons 1 --seeds 0

Each run is `vpntk synthesize --config experiments/fashion_dpntk.py` with the
seed also used as the noise seed (recorded in privacy.json), so every number
can be re-made. Writes runs/table/eps*_seed*/ and experiments/results/dpntk_fashion.json,
and prints a Markdown table (mean +- std over seeds).
"""

import argparse
import dataclasses
import os

import numpy as np

from experiments.fashion_dpntk import get_config
from experiments.results_file import merge_result, read_results
from vpntk_jax.pipeline import run_synthesis

RESULTS = os.path.join(os.path.dirname(__file__), "results", "dpntk_fashion.json")


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0, 0.2])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--out", default="runs/table")
  args = parser.parse_args()
  results = read_results(RESULTS)
  for eps in args.epsilons:
    for seed in args.seeds:
      name = f"eps{eps:g}_seed{seed}"
      out = os.path.join(args.out, name)
      config = dataclasses.replace(get_config(), epsilon=eps, seed=seed, noise_seed=seed)
      resume = os.path.exists(os.path.join(out, "release.npz"))
      summary = run_synthesis(config, out, resume=resume, quiet=True)
      results = merge_result(RESULTS, name, {"epsilon": eps, "seed": seed, **summary})
      print(name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table(results))


def markdown_table(results: dict) -> str:
  rows = ["| epsilon | seeds | logistic regression | MLP | CNN | seconds per run |",
          "| --- | --- | --- | --- | --- | --- |"]
  for eps in sorted({r["epsilon"] for r in results.values()}):
    runs = [r for r in results.values() if r["epsilon"] == eps]
    cells = []
    for clf in ("logistic_regression", "mlp", "cnn"):
      acc = np.array([r["accuracy"][clf] for r in runs])
      cells.append(f"{acc.mean():.3f} +- {acc.std():.3f}")
    secs = np.mean([r["seconds"] for r in runs])
    rows.append(f"| {eps:g} | {len(runs)} | {' | '.join(cells)} | {secs:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
