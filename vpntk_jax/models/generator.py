"""Class-conditional generators: (latent z, label) -> image in [0, 1], NHWC."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def _upsample2x(x: jax.Array) -> jax.Array:
  # Bilinear x2. The reference used align_corners=True; jax.image.resize uses
  # half-pixel centres. Both are fixed, smooth upsamplers; neither is learned.
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


class ConvCondGenerator(nn.Module):
  """The DP-NTK reference generator, generalised to any size that is 4 x base.

  [z, onehot(y)] -> FC hidden -> BN -> ReLU -> FC base*base*ch -> BN -> reshape
  -> upsample x2 -> conv5x5 (ch/2) -> ReLU -> upsample x2 -> conv5x5 (out) ->
  sigmoid. For 28x28x1: base 7, hidden 200, ch 16 (the reference sizes).
  """
  num_classes: int
  image_shape: tuple[int, int, int] = (28, 28, 1)
  hidden: int = 200
  channels: int = 16

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array, train: bool = True) -> jax.Array:
    height, width, out_channels = self.image_shape
    if height % 4 or width % 4:
      raise ValueError(f"image size must be a multiple of 4, got {height}x{width}")
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    h = jnp.concatenate([z, jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype)], -1)
    h = nn.relu(bn()(nn.Dense(self.hidden)(h)))
    h = bn()(nn.Dense((height // 4) * (width // 4) * self.channels)(h))
    h = h.reshape(h.shape[0], height // 4, width // 4, self.channels)
    h = nn.relu(nn.Conv(self.channels // 2, (5, 5))(_upsample2x(h)))
    h = nn.Conv(out_channels, (5, 5))(_upsample2x(h))
    return nn.sigmoid(h)
