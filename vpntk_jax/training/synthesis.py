"""Synthesis from a trained state: `generate` images in batches of a fixed pixel budget."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from vpntk_jax.log import Progress

from vpntk_jax import arrays
from vpntk_jax.training.samplers import TrainState, as_sampler

# Pixels generated per batch: 5000 images at 28x28x1. A fixed image count
# would need ~20x the memory at 128x128 (the generator's full-size
# activations dominate): a 128x128 synthesis died with bad_alloc on a shared
# 24 GB machine.
GENERATE_PIXELS_PER_BATCH = 5000 * 28 * 28


def generation_batch_size(image_shape) -> int:
  """Images per synthesis batch for `image_shape` (H, W, C): a fixed pixel budget."""
  return max(1, GENERATE_PIXELS_PER_BATCH // int(np.prod(image_shape)))


def sample_fn(model, latent_dim: int):
  """sample(params, model_state, key, labels) -> uint8 images of those labels (jitted)."""
  sampler = as_sampler(model)

  @jax.jit
  def sample(params, model_state, key, labels):
    z = jax.random.normal(key, (labels.shape[0], latent_dim))
    x, _ = sampler.apply(params, model_state, z, labels, train=False)
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255).astype(jnp.uint8)
  return sample


def output_shape(model, state: TrainState, *, latent_dim: int) -> tuple[int, ...]:
  """The shape of one synthesized image, from shapes alone (`state` may be abstract)."""
  sample = sample_fn(model, latent_dim)
  one = jax.eval_shape(sample, state.params, state.model_state, jax.random.key(0),
                       jax.ShapeDtypeStruct((1,), jnp.int32))
  return tuple(one.shape[1:])


def generate(model, state: TrainState, key: jax.Array, labels, *, latent_dim: int,
             batch_size: int | None = None, progress: bool = False) -> np.ndarray:
  """Images (uint8 NHWC) for the given labels, in batches, BN in inference mode.

  `batch_size` None: `generation_batch_size` of the model's output shape.
  """
  sample = sample_fn(model, latent_dim)
  labels = np.asarray(labels, np.int32)
  if batch_size is None:
    one = jax.eval_shape(sample, state.params, state.model_state, key, labels[:1])
    batch_size = generation_batch_size(one.shape[1:])
  out = []
  bar = Progress(total=len(labels), desc="synthesize", disable=not progress, dynamic_ncols=True)
  for i, rows in enumerate(arrays.consecutive_rows(len(labels), batch_size)):
    padded, _ = arrays.padded_chunk(labels, rows, batch_size)
    out.append(np.asarray(sample(state.params, state.model_state, jax.random.fold_in(key, i),
                                 padded))[:len(rows)])
    bar.update(len(rows))
  bar.close()
  return np.concatenate(out, axis=0)
