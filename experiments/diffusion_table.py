"""The diffusion methods from the shipped public model, on FashionMNIST, at CPU scale.

    python -m experiments.diffusion_table --variants public-only privimage-conditioning \
        --epsilons 1 10 --seeds 0
    python -m experiments.diffusion_table --table          # the Markdown table of what ran

Private: the 55,000 private images of `experiments.fashion_split` (the real 10,000
test set), replace-one, delta 1e-5. Every variant starts from `shipped:fashion_pool`
(the fast UNet trained on the public pool) with the settings of the README's
PrivImage example: 200 DP-SGD steps of expected batch 256, one noise draw, clip
1e-3, Adam 3e-4, 6,000 synthetic images (the classifiers train on 6,000 either way).
VARIANTS:
  public-only             the shipped model's FashionMNIST classes sampled, no private
                          data (DPDM's class-c start, 0 DP-SGD steps): the floor
  privimage-conditioning  PrivImage, DP-SGD on the conditioning layers only
  privimage-full          PrivImage, DP-SGD on every parameter
  dpdm-conditioning       DPDM from the shipped model (class c from its class c),
                          conditioning layers only
Runs go to runs/diffusion_table/VARIANT_epsE_seedS (an interrupted one resumes; the
noise seed is the seed, so a run can be re-made: NOT PRIVATE, an experiment);
results are merged into experiments/results/diffusion_table.json.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

PRIVATE = "data/fashion_split/private.npz"
CLASSIFIER = "public/pool28_classifier"
RUNS = os.path.join("runs", "diffusion_table")
RESULTS = os.path.join("experiments", "results", "diffusion_table.json")
VARIANTS = ("public-only", "privimage-conditioning", "privimage-full", "dpdm-conditioning")
CLASSIFIERS = ("logistic_regression", "mlp", "cnn")


def config_for(variant: str, epsilon: float, seed: int):
  from vpntk_jax.blocks import DataConfig, DpSgdConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.config import RunConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.methods import dpdm, privimage  # pylint: disable=import-outside-toplevel
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; one of {VARIANTS}")
  trainable = "all" if variant.endswith("-full") else "conditioning"
  dp_sgd = DpSgdConfig(steps=0 if variant == "public-only" else 200, batch_size=256,
                       clip_norm=1e-3, multiplicity=1, learning_rate=3e-4,
                       trainable=trainable)
  if variant.startswith("privimage"):
    options = privimage.Options(public_model=CLASSIFIER, dp_sgd=dp_sgd)
  else:
    options = dpdm.Options(pretrain_conditional=True, dp_sgd=dp_sgd)
  return RunConfig(method="privimage" if variant.startswith("privimage") else "dpdm",
                   data=DataConfig(source=PRIVATE), epsilon=epsilon, delta=1e-5,
                   noise_seed=seed, seed=seed, num_synthetic=6000,
                   classifiers=CLASSIFIERS, options=options).validate()


def run_name(variant: str, epsilon: float, seed: int) -> str:
  return f"{variant}_eps{epsilon:g}_seed{seed}"


def run(variant: str, epsilon: float, seed: int) -> dict:
  from experiments.results_file import merge_result  # pylint: disable=import-outside-toplevel
  from experiments.runs import run_or_resume  # pylint: disable=import-outside-toplevel
  name = run_name(variant, epsilon, seed)
  out = os.path.join(RUNS, name)
  summary = run_or_resume(config_for(variant, epsilon, seed), out)
  record = {"variant": variant, "epsilon": epsilon, "seed": seed, **summary,
            "command": f"python -m experiments.diffusion_table --variants {variant} "
                       f"--epsilons {epsilon:g} --seeds {seed}"}
  merge_result(RESULTS, name, record)
  return record


def table(results: dict) -> str:
  """Mean +- std over the seeds of each (variant, epsilon) that ran."""
  cells: dict[tuple, list] = {}
  for record in results.values():
    accuracy = record.get("accuracy") or {}
    if all(c in accuracy for c in CLASSIFIERS):
      cells.setdefault((record["variant"], record["epsilon"]), []).append(
          [accuracy[c] for c in CLASSIFIERS])
  lines = ["| variant | epsilon | seeds | " + " | ".join(CLASSIFIERS) + " |",
           "| --- | --- | --- |" + " --- |" * len(CLASSIFIERS)]
  for (variant, epsilon), rows in sorted(cells.items(),
                                         key=lambda kv: (VARIANTS.index(kv[0][0]), kv[0][1])):
    values = np.asarray(rows)
    shown = [f"{m:.3f}" if len(rows) == 1 else f"{m:.3f} +- {s:.3f}"
             for m, s in zip(values.mean(0), values.std(0))]
    epsilon_shown = "-" if variant == "public-only" else f"{epsilon:g}"
    lines.append(f"| {variant} | {epsilon_shown} | {len(rows)} | " + " | ".join(shown) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
  parser.add_argument("--epsilons", nargs="+", type=float, default=[1.0, 10.0])
  parser.add_argument("--seeds", nargs="+", type=int, default=[0])
  parser.add_argument("--table", action="store_true", help="print the table of what ran")
  args = parser.parse_args(argv)
  if args.table:
    from experiments.results_file import read_results  # pylint: disable=import-outside-toplevel
    print(table(read_results(RESULTS)))
    return
  from experiments import privimage_fashion  # pylint: disable=import-outside-toplevel
  privimage_fashion.prepare()  # the split, the pool and the pool classifier
  for variant in args.variants:
    # public-only spends nothing: one run stands for every epsilon.
    epsilons = args.epsilons[:1] if variant == "public-only" else args.epsilons
    for epsilon in epsilons:
      for seed in args.seeds:
        record = run(variant, epsilon, seed)
        print(json.dumps({k: record.get(k) for k in ("variant", "epsilon", "seed",
                                                       "accuracy")}), flush=True)


if __name__ == "__main__":
  main()
