"""What the diffusion-family methods (PrivImage, DPDM, DP-SGD-TI) share beyond their
blocks: the logs a run writes and the public pool's setting. JAX-free. The blocks
themselves (model, public pretraining, DP-SGD) are in `vpntk_jax.blocks`, where
`vpntk pretrain-diffusion` and `public.diffusion_model` read them too."""

from __future__ import annotations

from vpntk_jax.run_files import DP_SGD_LOG, TRAIN_LOG
from vpntk_jax.settings import setting


def training_logs(options, *, pretrains: bool) -> frozenset:
  """The logs of a diffusion-family run: train_log.csv of the public pretraining
  (where it has public images, `pretrains`, and steps) and dp_sgd_log.csv of
  DP-SGD (where it has steps)."""
  logs = set()
  if pretrains and options.pretrain.steps:
    logs.add(TRAIN_LOG)
  if options.dp_sgd.steps:
    logs.add(DP_SGD_LOG)
  return frozenset(logs)


def public_data_setting(none: str):
  return setting(None, "the public image pool (any data source; its train split)",
                 flag="--public-data", metavar="SOURCE", none=none)


# The package's public diffusion model of the 30-class public pool (28x28x1).
SHIPPED_START = "shipped:fashion_pool"


def start_model_setting():
  return setting(SHIPPED_START, "the public diffusion model the UNet starts from: a "
                 "directory from `vpntk pretrain-diffusion`, or shipped:NAME (the "
                 "package's, checked by sha256); none: a random start",
                 flag="--start-model", metavar="MODEL", parse=str)

