"""Textual inversion on a frozen EDM UNet: one conditioning token per image.

For each image, a new token (a row like the UNet's label rows, `unet.token_dim`
long) is optimised with Adam so that the EDM denoising loss of that image,
conditioned on the token, is small; the network and every other token stay
frozen. The images of a chunk are inverted together, vmapped over per-image
Adam states; image i's token depends on image i and its own key only, never on
the other images of the chunk (tested bit for bit), which DPAgg-TI's
sensitivity argument needs.

`unit_rows` scales tokens to norm <= 1 whatever their values (a diverged,
NaN token becomes zero), so their sum has the sensitivity of unit vectors.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpntk_jax import arrays
from vpntk_jax.diffusion import edm
from vpntk_jax.features.ntk import normalising_scale


def unit_rows(tokens: jax.Array) -> jax.Array:
  """Each row scaled to L2 norm <= 1 (1 / (1 + the features' safety margin), so float
  error cannot push it above 1); rows that are zero or not finite become zero.

  The row is first scaled by a power of two to a largest magnitude in [0.5, 1):
  its squared norm then neither overflows nor underflows in float32. Subnormal
  entries count as zero (XLA flushes them).
  """
  tokens = jnp.asarray(tokens, jnp.float32)
  finite = jnp.all(jnp.isfinite(tokens), axis=-1, keepdims=True)
  tokens = jnp.where(finite, tokens, 0.0)
  peak = jnp.max(jnp.abs(tokens), axis=-1, keepdims=True)
  # A power of two, applied exactly: XLA may turn a division into a multiplication
  # by the reciprocal, which flushes to zero for peaks near the float32 maximum.
  _, exponent = jnp.frexp(jnp.where(peak > 0, peak, 1.0))
  scaled = jnp.ldexp(tokens, -exponent)
  return scaled * normalising_scale(jnp.sum(jnp.square(scaled), axis=-1))[:, None]


def _invert_one(apply_fn: Callable, unet_params, null_token: jax.Array, init: jax.Array,
                image: jax.Array, key: jax.Array, *, steps: int, learning_rate: float,
                multiplicity: int) -> jax.Array:
  optimizer = optax.adam(learning_rate)

  def loss(token, step_key):
    params = {"unet": unet_params, "tokens": jnp.stack([token, null_token])}
    # Label 0 is the token; no label dropout: the null token is not being learned.
    return edm.per_example_loss(params, apply_fn, image, jnp.zeros((), jnp.int32), step_key,
                                multiplicity=multiplicity)

  def step(i, carry):
    token, opt_state = carry
    grad = jax.grad(loss)(token, jax.random.fold_in(key, i))
    updates, opt_state = optimizer.update(grad, opt_state, token)
    return optax.apply_updates(token, updates), opt_state

  token, _ = jax.lax.fori_loop(0, steps, step, (init, optimizer.init(init)))
  return token


@functools.partial(jax.jit, static_argnums=(0,),
                   static_argnames=("steps", "learning_rate", "multiplicity"))
def _invert_chunk(apply_fn, unet_params, null_token, init, images, keys, *, steps,
                  learning_rate, multiplicity):
  one = functools.partial(_invert_one, apply_fn, unet_params, null_token, init, steps=steps,
                          learning_rate=learning_rate, multiplicity=multiplicity)
  return jax.vmap(one)(images, keys)


def invert_images(apply_fn: Callable, unet_params, null_token, init, images: np.ndarray,
                  keys: jax.Array, *, steps: int, learning_rate: float,
                  multiplicity: int, chunk_size: int = 64,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
  """(n, token_dim) float32 tokens, one per uint8 image [n, H, W, C].

  apply_fn: `unet.token_apply_fn` of the frozen UNet; null_token: its null row
  (guidance and the loss's unconditional rows never move); init: the token
  every inversion starts from. keys[j]: image j's key (for private images, from
  `privacy.example_keys.record_keys`: secret, and a function of the image, not of
  its row). Chunks of `chunk_size` images are
  padded to one shape (one compilation); memory grows with chunk_size *
  multiplicity.
  """
  images = np.asarray(images)
  key_words = np.asarray(jax.random.key_data(keys))
  if len(key_words) != len(images):
    raise ValueError(f"{len(images)} images but {len(key_words)} keys")
  out = []
  for chunk in arrays.consecutive_rows(len(images), chunk_size):
    batch, _ = arrays.padded_chunk(images, chunk, chunk_size)
    batch_keys, _ = arrays.padded_chunk(key_words, chunk, chunk_size)
    tokens = _invert_chunk(apply_fn, unet_params, jnp.asarray(null_token),
                           jnp.asarray(init, jnp.float32), jnp.asarray(batch),
                           jax.random.wrap_key_data(batch_keys), steps=int(steps),
                           learning_rate=float(learning_rate), multiplicity=int(multiplicity))
    out.append(np.asarray(tokens)[:len(chunk)])
    if progress is not None:
      progress(int(chunk[-1]) + 1 if len(chunk) else 0)
  if not out:
    return np.zeros((0, np.shape(init)[-1]), np.float32)
  return np.concatenate(out).astype(np.float32)
