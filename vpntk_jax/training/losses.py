"""The training objectives: distances between a released embedding and a synthetic one.

`embedding_loss` implements each name of `vpntk_jax.blocks.LOSSES` (the
JAX-free list that configs are checked against); the two must agree, which is
checked at import.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from vpntk_jax.blocks import LOSSES


def squared_distance(a, b) -> jax.Array:
  """||a - b||^2 summed over all leaves of two pytrees of the same structure."""
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _one_minus_cosine(target, synthetic) -> jax.Array:
  """1 - cos(t, s), each pytree taken as one vector of all its leaves."""
  t, s = jax.tree.leaves(target), jax.tree.leaves(synthetic)
  dot = sum(jnp.vdot(a, b) for a, b in zip(t, s))
  norms = jnp.sqrt(sum(jnp.vdot(a, a) for a in t) * sum(jnp.vdot(b, b) for b in s))
  return 1.0 - dot / jnp.maximum(norms, 1e-30)


# Each name in blocks.LOSSES -> (target, synthetic, cosine_weight) -> loss.
_LOSS_FNS: dict[str, Callable] = {
    "mmd": lambda target, synthetic, cosine_weight: squared_distance(target, synthetic),
    "cosine": lambda target, synthetic, cosine_weight: _one_minus_cosine(target, synthetic),
    "mmd+cosine": lambda target, synthetic, cosine_weight: (
        squared_distance(target, synthetic)
        + cosine_weight * _one_minus_cosine(target, synthetic)),
}
if tuple(_LOSS_FNS) != LOSSES:
  raise ImportError(f"vpntk_jax.training.losses implements {tuple(_LOSS_FNS)}, but "
                    f"vpntk_jax.blocks.LOSSES lists {LOSSES}")


def embedding_loss(kind: str = "mmd", cosine_weight: float = 1.0) -> Callable:
  """(target, synthetic) -> loss: "mmd" ||t - s||^2, "cosine" 1 - cos(t, s), or
  "mmd+cosine" ||t - s||^2 + cosine_weight * (1 - cos(t, s)) (VP-NTK's objective)."""
  if kind not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
  loss_fn = _LOSS_FNS[kind]

  def loss(target, synthetic):
    return loss_fn(target, synthetic, cosine_weight)
  return loss
