"""Small layers shared by the generator, the extractor and the evaluation CNN."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn


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


# Bytes of shifted copies a 3x3 matmul convolution forms at once on CPU (`conv3x3_same`)
# where a whole batch's would be large (the VGG extractors): a few MB stay in cache
# between the copy and the matmul that reads it.
PATCH_CHUNK_BYTES = 8 * 2**20


def conv3x3_same(x: jax.Array, kernel: jax.Array, bias: jax.Array,
                 chunk_bytes: int | None = None) -> jax.Array:
  """3x3 convolution (cross-correlation), stride 1, zero padding 1, NHWC with an HWIO
  kernel: nn.Conv(features, (3, 3), padding=1)'s result.

  On CPU it is the nine shifted images concatenated and one matmul: XLA's CPU
  convolution ran VGG16 about 7x slower than this at 32x32 (0.16 vs 0.02 s per
  image on 2 cores). The nine copies of a whole batch's input are far larger than
  the cache (VGG16's second conv at 32x32: 2.4 MB per image), and writing them to
  memory and reading them back took 2 to 4 times the matmul itself; so the batch
  can be taken `chunk_bytes` of copies at a time (a loop over example chunks, each
  chunk's copies read by its matmul while still in cache; `PATCH_CHUNK_BYTES`).
  None: the whole batch at once (inside a per-example vmap, as DP-SGD runs the
  UNet, a chunk loop would only add a loop). The kernel's gradient sums over the
  chunks; the input's gradient needs no copies kept.
  Elsewhere XLA's convolution (cuDNN on GPUs, without the copies).
  """
  if jax.default_backend() != "cpu":
    y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias
  n, h, w, c = x.shape
  per_example = 9 * h * w * c * x.dtype.itemsize
  chunk = n if chunk_bytes is None else max(1, int(chunk_bytes) // per_example)
  if chunk >= n:
    return _shifted_matmul(x, kernel, bias)
  full = n // chunk * chunk
  y = jax.lax.map(lambda xc: _shifted_matmul(xc, kernel, bias),
                  x[:full].reshape((n // chunk, chunk) + x.shape[1:]))
  y = y.reshape((full,) + y.shape[2:])
  if full < n:
    y = jnp.concatenate([y, _shifted_matmul(x[full:], kernel, bias)])
  return y


def _shifted_matmul(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
  n, h, w, c = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate([padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)],
                            axis=-1)
  return (patches.reshape(-1, 9 * c) @ kernel.reshape(9 * c, -1)).reshape(n, h, w, -1) + bias


class MatmulConv(nn.Module):
  """nn.Conv(features, (k, k)) with SAME padding, k 1 or 3: the same parameters ("kernel"
  HWIO, "bias") and initialisers, computed as matmuls on CPU (`conv3x3_same`).

  Besides the VGG stack's speed, this is what makes per-example kernel gradients fast
  on XLA:CPU: under jax.vmap a convolution's kernel gradient becomes a grouped
  convolution, which XLA:CPU runs far below its matmul rate, while a matmul's
  becomes a batched matmul.
  """
  features: int
  kernel_size: tuple[int, int] = (3, 3)
  kernel_init: Callable = nn.initializers.lecun_normal()
  chunk_bytes: int | None = None  # conv3x3_same's

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    size = tuple(self.kernel_size)
    if size not in ((1, 1), (3, 3)):
      raise ValueError(f"MatmulConv takes 1x1 or 3x3 kernels, got {size}")
    kernel = self.param("kernel", self.kernel_init, size + (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    if size == (1, 1):
      return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0].astype(x.dtype)) + bias
    return conv3x3_same(x, kernel, bias, self.chunk_bytes)
