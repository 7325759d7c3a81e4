"""The training objectives: distances between a released embedding and a synthetic one.

`embedding_loss` implements each name of `vpntk_jax.blocks.LOSSES` (the
JAX-free list that configs are checked against); the two must agree, which is
checked at import.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

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


def _cosine_of_products(tt, ts, ss) -> jax.Array:
  return 1.0 - ts / jnp.maximum(jnp.sqrt(tt * ss), 1e-30)


# Each name in blocks.LOSSES -> (target, synthetic, cosine_weight) -> loss, and the
# same loss from the inner products (tt, ts, ss) = (<t,t>, <t,s>, <s,s>).
_LOSS_FNS: dict[str, Callable] = {
    "mmd": lambda target, synthetic, cosine_weight: squared_distance(target, synthetic),
    "cosine": lambda target, synthetic, cosine_weight: _one_minus_cosine(target, synthetic),
    "mmd+cosine": lambda target, synthetic, cosine_weight: (
        squared_distance(target, synthetic)
        + cosine_weight * _one_minus_cosine(target, synthetic)),
}
_LOSS_OF_PRODUCTS: dict[str, Callable] = {
    "mmd": lambda tt, ts, ss, cosine_weight: tt - 2.0 * ts + ss,
    "cosine": lambda tt, ts, ss, cosine_weight: _cosine_of_products(tt, ts, ss),
    "mmd+cosine": lambda tt, ts, ss, cosine_weight: (
        tt - 2.0 * ts + ss + cosine_weight * _cosine_of_products(tt, ts, ss)),
}
if not tuple(_LOSS_FNS) == tuple(_LOSS_OF_PRODUCTS) == LOSSES:
  raise ImportError(f"vpntk_jax.training.losses implements {tuple(_LOSS_FNS)}, but "
                    f"vpntk_jax.blocks.LOSSES lists {LOSSES}")


@dataclasses.dataclass(frozen=True)
class EmbeddingLoss:
  """One of blocks.LOSSES: called on (target, synthetic) embeddings, or
  `of_products(tt, ts, ss)` on their inner products (every one of them is a
  function of those three numbers, which a feature map may compute without
  forming the synthetic embedding; see `matching_objective`)."""
  kind: str = "mmd"
  cosine_weight: float = 1.0

  def __post_init__(self):
    if self.kind not in LOSSES:
      raise ValueError(f"loss must be one of {LOSSES}, got {self.kind!r}")

  def __call__(self, target, synthetic) -> jax.Array:
    return _LOSS_FNS[self.kind](target, synthetic, self.cosine_weight)

  def of_products(self, tt, ts, ss) -> jax.Array:
    return _LOSS_OF_PRODUCTS[self.kind](tt, ts, ss, self.cosine_weight)


def embedding_loss(kind: str = "mmd", cosine_weight: float = 1.0) -> EmbeddingLoss:
  """(target, synthetic) -> loss: "mmd" ||t - s||^2, "cosine" 1 - cos(t, s), or
  "mmd+cosine" ||t - s||^2 + cosine_weight * (1 - cos(t, s)) (VP-NTK's objective)."""
  return EmbeddingLoss(kind, cosine_weight)


class MatchingObjective(NamedTuple):
  """What a generator step minimises: `loss(prepare(target), x_grouped)` equals
  loss_fn(target, features.synthetic_mean(x_grouped)). `prepare` runs once, outside
  the step, so the step receives the prepared target as an argument."""
  prepare: Callable
  loss: Callable


def matching_objective(features, loss_fn: Callable = EmbeddingLoss()) -> MatchingObjective:
  """The objective for `features` and `loss_fn`, through inner products when it can.

  Feature maps with `synthetic_products` (the NTK maps) give <t, s> and <s, s>
  without forming s, which makes the step several times cheaper; any loss that is
  an `EmbeddingLoss` can use them. The products form computes ||t - s||^2 as
  tt - 2ts + ss: in float32 that keeps about 7 - log10(tt / ||t - s||^2) digits,
  plenty while the synthetic embedding is not within 1e-4 of the target in norm
  (a released embedding carries noise far larger than that). Other feature maps
  and losses form the embedding.
  """
  products = getattr(features, "synthetic_products", None)
  if products is None or not isinstance(loss_fn, EmbeddingLoss):
    return MatchingObjective(prepare=lambda target: target,
                             loss=lambda target, x: loss_fn(target, features.synthetic_mean(x)))

  def prepare(target):
    tt = sum(jnp.vdot(leaf, leaf) for leaf in jax.tree.leaves(target))
    return tt, features.products_target(target)

  def loss(prepared, x_grouped):
    tt, target = prepared
    ts, ss = products(target, x_grouped)
    return loss_fn.of_products(tt, ts, ss)
  return MatchingObjective(prepare, loss)
