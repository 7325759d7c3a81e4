"""The NTK feature map as a pipeline component (DP-NTK, and VP-NTK on extractor features)."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np

from vpntk_jax.features import ntk
from vpntk_jax.features.public_params import public_constant


@dataclasses.dataclass(frozen=True)
class NTKFeatureMap:
  """NTK features of a fixed random network on flattened images.

  The network parameters are public: drawn from `seed`, never from data.
  """
  network: ntk.NTKNetwork
  input_dim: int
  seed: int = 0
  chunk_size: int = 2048
  norm_bound: float = 1.0

  @property
  def params(self) -> ntk.Params:
    return _cached_params(self.network, self.input_dim, self.seed)

  def private_sum(self, images: np.ndarray, labels: np.ndarray, num_classes: int,
                  progress: Callable[[int], None] | None = None, mesh=None) -> ntk.Embedding:
    return ntk.private_embedding_sum(self.network, self.params, images, labels, num_classes,
                                     chunk_size=self.chunk_size, progress=progress, mesh=mesh)

  def synthetic_mean(self, x_grouped: jax.Array) -> ntk.Embedding:
    return ntk.synthetic_embedding(self.network, self.params, x_grouped)

  def products_target(self, target: ntk.Embedding) -> ntk.Embedding:
    """The target in the layout `synthetic_products` reads (done once, not per step)."""
    return ntk.classes_first(target)

  def synthetic_products(self, target: ntk.Embedding, x_grouped: jax.Array):
    """(<T, S>, ||S||^2) for S = synthetic_mean(x_grouped), T in products_target's layout."""
    return ntk.synthetic_products(self.network, self.params, target, x_grouped)

  def template(self, num_classes: int) -> ntk.Embedding:
    """Zero embedding with this map's structure (to unflatten a stored release)."""
    return jax.tree.map(lambda p: np.zeros(p.shape + (num_classes,), np.float32), self.params)

  def describe(self) -> dict:
    return {"kind": "ntk", "layers": list(self.network.layers), "init": self.network.init,
            "input_dim": self.input_dim, "seed": self.seed,
            "num_params": ntk.num_params(self.params)}


@public_constant
def _cached_params(network: ntk.NTKNetwork, input_dim: int, seed: int) -> ntk.Params:
  return ntk.init_params(jax.random.key(seed), network, input_dim)
