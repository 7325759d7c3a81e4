"""Small layers shared by the generator, the extractor and the evaluation CNN."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pool, stride 2, odd edges dropped (same result as nn.max_pool with VALID).

  Written as a max of four strided slices because the gradient of XLA's
  reduce_window (select_and_scatter) is several times slower on CPU.
  """
  h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
  x = x[:, :h, :w]
  return jnp.maximum(
    jnp.maximum(x[:, 0::2, 0::2], x[:, 1::2, 0::2]), jnp.maximum(x[:, 0::2, 1::2], x[:, 1::2, 1::2])
  )
