"""VP-NTK ablations over kappa, eta (learning rate), alpha, the loss and the prompts.

    python -m experiments.vpntk_ablation --base runs/vp28_a

Every variant reuses the private release of the base run (`reuse_release`),
so the whole ablation spends the base run's epsilon once: only
post-processing settings change. Short training (--steps) and logistic
regression + MLP keep it to minutes per variant on a CPU; compare variants
with each other, not with the full-length table. Results accumulate in
experiments/results/vpntk_ablation.json (--results FILE for another base run);
prints a Markdown table.
"""

import argparse
import os

from experiments.results_file import merge_result, read_results
from vpntk_jax import config as config_lib
from vpntk_jax.pipeline import resume_config, run_synthesis

RESULTS = os.path.join(os.path.dirname(__file__), "results", "vpntk_ablation.json")
# name -> overrides of the base config (dotted names, as on the command line).
VARIANTS = {
    "base (mmd+cosine, alpha 1, kappa 1, eta 1e-2, full prompt)": {},
    "loss mmd only": {"loss": "mmd"},
    "loss cosine only": {"loss": "cosine"},
    "alpha 0.1": {"cosine_weight": 0.1},
    "alpha 10": {"cosine_weight": 10.0},
    "kappa 0 (no latent prompt)": {"options.prompt.latent_noise": False},
    "kappa 3": {"options.prompt.kappa": 3.0},
    "eta 1e-3": {"train.learning_rate": 1e-3},
    "eta 1e-1": {"train.learning_rate": 1e-1},
    "pad prompt": {"options.prompt.image_prompt": "pad"},
    "learned label map": {"options.prompt.label_map": "learned"},
    "fine-tune generator": {"options.prompt.finetune_generator": True},
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--base", required=True, help="a finished vp-ntk run whose release is reused")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch-size", type=int, default=200)
  parser.add_argument("--num-synthetic", type=int, default=10000)
  parser.add_argument("--classifiers", default="logistic_regression,mlp")
  parser.add_argument("--variants", nargs="+", help="subset of the variant names")
  parser.add_argument("--out", default="runs/vpablation")
  parser.add_argument("--results", default=RESULTS,
                      help="JSON the rows accumulate in (keyed by variant name: use one file "
                           "per base run, or a new base overwrites the old rows)")
  args = parser.parse_args()
  base = resume_config(args.base, {})  # the base run's stored config
  common = {"train.steps": args.steps, "train.batch_size": args.batch_size,
            "num_synthetic": args.num_synthetic, "classifiers": tuple(args.classifiers.split(","))}
  results = read_results(args.results)
  for i, (name, overrides) in enumerate(VARIANTS.items()):
    if args.variants and name not in args.variants:
      continue
    config = config_lib.with_overrides(base, {**common, **overrides})
    out = os.path.join(args.out, f"variant{i}")
    if os.path.exists(os.path.join(out, "metrics.json")):
      continue
    summary = run_synthesis(config, out, quiet=True, reuse_release=args.base)
    results = merge_result(args.results, name, {
        "base": args.base, "overrides": {k: str(v) for k, v in overrides.items()},
        "steps": args.steps, "batch_size": args.batch_size, **summary})
    print(name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table(results))


def markdown_table(results: dict) -> str:
  rows = ["| variant | logistic regression | MLP |", "| --- | --- | --- |"]
  for name, r in results.items():
    acc = r["accuracy"]
    rows.append(f"| {name} | {acc.get('logistic_regression', float('nan')):.3f} | "
                f"{acc.get('mlp', float('nan')):.3f} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
