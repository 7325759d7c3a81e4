"""Class-conditional diffusion (EDM) for PrivImage, DPDM and the token methods.

  edm        preconditioning, denoise, per_example_loss (noise multiplicity,
             label dropout), batch_loss, the Heun sampler `sample`
  train      make_train_step: the non-private step; pretrain_edm: its
             checkpointed loop (public pretraining)
  inversion  per-image textual inversion (vmapped), unit_rows

The network is `vpntk_jax.models.unet`; the EMA is `vpntk_jax.training.ema`.
"""

from vpntk_jax.diffusion.edm import (
    batch_loss,
    denoise,
    draw_losses,
    drop_labels,
    heun,
    per_example_loss,
    preconditioning,
    sample,
    split_example_key,
    to_model_range,
    to_uint8,
)
from vpntk_jax.diffusion.train import make_train_step

__all__ = [
    "batch_loss", "denoise", "draw_losses", "drop_labels", "per_example_loss", "preconditioning",
    "heun", "sample", "split_example_key", "to_model_range", "to_uint8",
    "make_train_step",
]
