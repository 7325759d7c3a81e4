"""Feature maps: the per-example features whose labelled mean gets released.

Methods of the one-release family differ mainly in their feature map (DP-NTK:
NTK features; DP-MERF: random Fourier features; DP-MEPF: perceptual features;
VP-NTK: NTK features of a public extractor's activations). Each implements
`FeatureMap`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from vpntk_jax.features.ntk_map import NTKFeatureMap
from vpntk_jax.features.rff import RFFFeatureMap

# A pytree whose leaves end in a class axis (see `ntk.embedding_to_matrix`).
Embedding = Any


@runtime_checkable
class FeatureMap(Protocol):
  """What the release and the training need of a feature map."""

  @property
  def norm_bound(self) -> float:
    """Every per-example feature has L2 norm <= this, for any input: the release's
    sensitivity rests on it."""

  def private_sum(self, images, labels, num_classes: int,
                  progress: Callable[[int], None] | None = None, mesh=None) -> Embedding:
    """The labelled sum sum_i phi(x_i) y_i^T of uint8 images."""

  def synthetic_mean(self, x_grouped) -> Embedding:
    """The labelled mean of a class-grouped batch (C, n, ...) of images in [0, 1],
    differentiable in x."""

  def template(self, num_classes: int) -> Embedding:
    """Zeros shaped like an embedding."""

  def describe(self) -> dict:
    """What the features are, for logs and reports."""


__all__ = ["Embedding", "FeatureMap", "NTKFeatureMap", "RFFFeatureMap"]
