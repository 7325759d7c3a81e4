"""Class-conditional generators: (latent z, label) -> image in [0, 1], NHWC."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

# Upsample+conv layers whose dense matrix has at most this many entries run as
# one matmul (see UpsampleConv); larger ones use XLA's convolution.
DENSE_UPSAMPLE_CONV_MAX_ENTRIES = 1 << 23


def _upsample2x(x: jax.Array) -> jax.Array:
  # Bilinear x2. The reference used align_corners=True; jax.image.resize uses
  # half-pixel centres. Both are fixed, smooth upsamplers; neither is learned.
  n, h, w, c = x.shape
  return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="bilinear")


@functools.lru_cache(maxsize=None)
def _upsample_conv_taps(size: int, kernel: int) -> np.ndarray:
  """taps[a, q, k]: weight of input row a on output row q through kernel tap k.

  Bilinear x2 upsampling (half-pixel centres, edge clamped, as jax.image.resize)
  followed by a 'SAME' correlation with a length-`kernel` filter, along one axis.
  """
  up = np.zeros((2 * size, size))
  for p in range(2 * size):
    src = min(max((p + 0.5) / 2 - 0.5, 0.0), size - 1.0)
    lo = int(np.floor(src))
    hi = min(lo + 1, size - 1)
    up[p, lo] += 1 - (src - lo)
    up[p, hi] += src - lo
  taps = np.zeros((size, 2 * size, kernel))
  for q in range(2 * size):
    for k in range(kernel):
      p = q + k - kernel // 2
      if 0 <= p < 2 * size:
        taps[:, q, k] = up[p]
  return taps.astype(np.float32)


class UpsampleConv(nn.Module):
  """Bilinear x2 upsampling followed by a 'SAME' conv (parameters as nn.Conv).

  Both steps are linear, so for small images their composition is one dense
  (H*W*Cin, 4*H*W*Cout) matrix, built from the kernel by a small einsum. On
  CPUs one matmul beats XLA's convolution backward by ~3x at 28x28 (measured
  in benchmarks/ntk_embedding.py); results agree to float tolerance (tested).
  """
  features: int
  kernel_size: int = 5
  force_conv: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, cin = x.shape
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, cin, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    entries = (h * w * cin) * (4 * h * w * self.features)
    if self.force_conv or entries > DENSE_UPSAMPLE_CONV_MAX_ENTRIES:
      y = jax.lax.conv_general_dilated(_upsample2x(x), kernel.astype(x.dtype), (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      return y + bias
    th = jnp.asarray(_upsample_conv_taps(h, k))
    tw = jnp.asarray(_upsample_conv_taps(w, k))
    matrix = jnp.einsum("aqk,brl,klio->abiqro", th, tw, kernel)
    matrix = matrix.reshape(h * w * cin, 4 * h * w * self.features)
    y = x.reshape(n, -1) @ matrix.astype(x.dtype)
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias


def default_upsamples(size: int) -> int:
  """Number of x2 upsampling stages: the fewest (>= 2) that start from <= 8 pixels."""
  k = 2
  while size % (2 ** (k + 1)) == 0 and size // (2 ** k) > 8:
    k += 1
  return k


class ConvCondGenerator(nn.Module):
  """The DP-NTK reference generator, generalised to larger images.

  [z, onehot(y)] -> FC hidden -> BN -> ReLU -> FC base*base*ch -> BN -> reshape
  -> k x (upsample x2 -> conv5x5, channels halving, ReLU between) -> sigmoid.
  For 28x28x1 (k = 2): base 7, hidden 200, ch 16 -> 8 -> 1, the reference
  sizes. Larger images get more stages (64: k = 3, 128: k = 4) and ch doubled
  per extra stage, so every stage keeps the reference's width at its scale.

  `labels` may be int class ids (N,) or soft class weights (N, num_classes)
  (VP-NTK's learned label map feeds a mixture of public classes).
  """
  num_classes: int
  image_shape: tuple[int, int, int] = (28, 28, 1)
  hidden: int = 200
  channels: int = 16
  upsamples: int | None = None  # None: default_upsamples(height)
  force_conv: bool = False  # True: always XLA convolutions (benchmarks, tests)

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array, train: bool = True) -> jax.Array:
    height, width, out_channels = self.image_shape
    k = self.upsamples or default_upsamples(height)
    if height % (2 ** k) or width % (2 ** k):
      step = 2 ** k
      near = sorted({max(step, height // step * step), -(-height // step) * step})
      raise ValueError(f"the generator makes images whose size is a multiple of {step} "
                       f"({k} upsampling stages), not {height}x{width}; sizes that work "
                       f"near it: {' or '.join(str(n) for n in near)} (--image-size)")
    bn = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    onehot = (labels.astype(z.dtype) if labels.ndim == 2
              else jax.nn.one_hot(labels, self.num_classes, dtype=z.dtype))
    h = jnp.concatenate([z, onehot], -1)
    h = nn.relu(bn()(nn.Dense(self.hidden)(h)))
    channels = self.channels * 2 ** (k - 2)
    h = bn()(nn.Dense((height >> k) * (width >> k) * channels)(h))
    h = h.reshape(h.shape[0], height >> k, width >> k, channels)
    for _ in range(k - 1):
      channels = max(channels // 2, 8)
      h = nn.relu(UpsampleConv(channels, force_conv=self.force_conv)(h))
    h = UpsampleConv(out_channels, force_conv=self.force_conv)(h)
    return nn.sigmoid(h)
