"""The public feature extractor: a small CNN classifier whose activations are features.

VP-NTK computes NTK features on top of this network's activations instead of
raw pixels, so the feature dimension stays small at any resolution. It is
trained on public data only (`vpntk_jax.public`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vpntk_jax.models.layers import max_pool_2x2


def default_stages(size: int) -> int:
  """Number of conv + 2x2-pool stages: until the side is <= 8 (28 -> 2, 64 -> 3, 128 -> 4)."""
  k = 1
  while size >> k > 8:
    k += 1
  return max(k, 2)


class ConvExtractor(nn.Module):
  """k x (conv3x3 -> ReLU -> max-pool 2x2) -> dense -> ReLU -> logits.

  Features: `features="pooled"`: the global average of every stage's
  activations and the hidden dense layer, concatenated; multi-scale, and of a
  size that does not grow with the resolution (VP-NTK). `features="maps"`:
  every stage's activation map flattened, and the hidden layer (DP-MEPF's
  perceptual features).
  Channel widths are taken from the end of `widths`: deep stages are wide,
  the few high-resolution stages narrow, which bounds the cost at 128x128.
  """
  num_classes: int
  widths: tuple[int, ...] = (16, 32, 64, 64)
  hidden: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, features: str | None = None) -> jax.Array:
    if features not in (None, "pooled", "maps"):
      raise ValueError(f"features must be None, 'pooled' or 'maps', got {features!r}")
    stages = default_stages(x.shape[1])
    widths = (self.widths[:1] * stages + self.widths)[-stages:]
    per_stage = []
    for width in widths:
      x = max_pool_2x2(nn.relu(nn.Conv(width, (3, 3))(x)))
      per_stage.append(jnp.mean(x, axis=(1, 2)) if features == "pooled"
                       else x.reshape(x.shape[0], -1))
    hidden = nn.relu(nn.Dense(self.hidden)(x.reshape(x.shape[0], -1)))
    if features is not None:
      return jnp.concatenate(per_stage + [hidden], axis=-1)
    return nn.Dense(self.num_classes)(hidden)

  def feature_dim(self, image_size: int) -> int:
    stages = default_stages(image_size)
    return sum((self.widths[:1] * stages + self.widths)[-stages:]) + self.hidden
