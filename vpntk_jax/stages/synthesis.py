"""Synthesis: a balanced labelled set from the trained sampler, stored with a sample grid."""

from __future__ import annotations

import os

import jax
import numpy as np

from vpntk_jax import io_utils
from vpntk_jax import training
from vpntk_jax import visualize
from vpntk_jax.errors import ConfigError
from vpntk_jax.training.synthesis import output_shape
from vpntk_jax.run_files import LOSS_PNG, SAMPLES, SYNTHETIC, TRAIN_LOG


def synthesize(sampler, state, num_classes: int, config, run, *, quiet: bool = False,
               class_names=None):
  """Balanced labelled synthetic set -> synthetic.npz and samples.png (its rows named
  by `class_names`, the public schema's, where known)."""
  labels = np.arange(config.num_synthetic) % num_classes
  images = training.generate(sampler, state, jax.random.key(config.seed + 1), labels,
                             latent_dim=latent_dim(sampler, config),
                             batch_size=getattr(sampler, "batch_size", None),
                             progress=not quiet)
  io_utils.save_npz_atomic(run.file(SYNTHETIC), images=images, labels=labels.astype(np.int32))
  visualize.save_sample_grid(run.file(SAMPLES), images, labels, num_classes,
                             class_names=class_names)
  return images, labels


def latent_dim(sampler, config) -> int:
  # A sampler may fix its own latent size (a diffusion model's latent is its
  # initial noise); generators take the run's.
  return getattr(sampler, "latent_dim", config.train.latent_dim)


def check_output(recipe, num_classes: int, image_shape, config) -> None:
  """Refuses, from shapes alone, a recipe whose post-processing and sampler cannot
  make images of `image_shape`: run before the release, so such a run spends
  nothing (`Recipe.abstract_state` builds the trained state abstractly)."""
  want = "x".join(str(d) for d in image_shape)
  try:
    state = recipe.abstract_state(config, num_classes)
    shape = output_shape(recipe.sampler, state, latent_dim=latent_dim(recipe.sampler, config))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{config.method} cannot synthesize {want} images: {e}") from None
  if tuple(shape) != tuple(image_shape):
    raise ConfigError(f"{config.method} would synthesize {'x'.join(map(str, shape))} images; "
                      f"the data is {want}")


def save_loss_curve(run) -> None:
  if not os.path.exists(run.file(TRAIN_LOG)):
    return
  rows = np.loadtxt(run.file(TRAIN_LOG), delimiter=",", skiprows=1, ndmin=2)
  if len(rows):
    visualize.save_loss_curve(run.file(LOSS_PNG), rows[:, 0], rows[:, 1])
