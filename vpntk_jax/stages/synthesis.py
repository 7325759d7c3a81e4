"""Synthesis: a balanced labelled set from the trained sampler, stored with a sample grid."""

from __future__ import annotations

import os

import jax
import numpy as np

from vpntk_jax import io_utils
from vpntk_jax import training
from vpntk_jax import visualize
from vpntk_jax.run_files import LOSS_PNG, SAMPLES, SYNTHETIC, TRAIN_LOG


def synthesize(sampler, state, num_classes: int, config, run, *, quiet: bool = False):
  """Balanced labelled synthetic set -> synthetic.npz and samples.png."""
  labels = np.arange(config.num_synthetic) % num_classes
  # A sampler may fix its own latent size and batch (a diffusion model's latent
  # is its initial noise); generators take the run's.
  images = training.generate(sampler, state, jax.random.key(config.seed + 1), labels,
                             latent_dim=getattr(sampler, "latent_dim", config.train.latent_dim),
                             batch_size=getattr(sampler, "batch_size", None),
                             progress=not quiet)
  io_utils.save_npz_atomic(run.file(SYNTHETIC), images=images, labels=labels.astype(np.int32))
  visualize.save_sample_grid(run.file(SAMPLES), images, labels, num_classes)
  return images, labels


def save_loss_curve(run) -> None:
  if not os.path.exists(run.file(TRAIN_LOG)):
    return
  rows = np.loadtxt(run.file(TRAIN_LOG), delimiter=",", skiprows=1, ndmin=2)
  if len(rows):
    visualize.save_loss_curve(run.file(LOSS_PNG), rows[:, 0], rows[:, 1])
