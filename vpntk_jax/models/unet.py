"""A small class-conditional EDM UNet (Karras et al. 2022, DDPM++ layout), NHWC.

The raw network F(c_in * x, c_noise, label) that `vpntk_jax.diffusion.edm`
preconditions into a denoiser. It is trained with DP-SGD (PrivImage, DPDM),
so it normalises with GroupNorm only: no layer reads statistics across the
batch, and one example's output depends on that example alone (tested).

Labels are ints in [0, num_classes]; num_classes is the null class that
classifier-free guidance conditions on (a learned embedding row of its own).
The label's embedding row is the network's conditioning token: a caller may
pass the tokens themselves (`cond`, `token_apply_fn`), which is how textual
inversion conditions the network on a token no label has.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from vpntk_jax.features import ntk
from vpntk_jax.models.layers import MatmulConv

# EDM's layers whose output joins a residual sum start near zero (init_weight
# 1e-5): every block, and the whole network, starts close to the identity.
_near_zero = nn.initializers.variance_scaling(1e-10, "fan_avg", "uniform")
_xavier = nn.initializers.xavier_uniform()
# EDM scales each residual sum by sqrt(1/2), (h + skip) / sqrt(2). Here only the
# skip is scaled: the learned conv before the sum absorbs the factor on h, so the
# networks are the same family and the same at init (h ~ 0); XLA:CPU compiles the
# gradient of a scaled GroupNorm-residual sum 3x slower (measured, 10 blocks).
_SKIP_SCALE = math.sqrt(0.5)
_attention_init = nn.initializers.variance_scaling(0.2, "fan_avg", "uniform")  # EDM's sqrt(0.2)


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Architecture of a UNet; `UNET_SIZES` names the tested ones.

  With `patch` p > 1 the network runs on p x p pixel blocks folded into
  channels (space-to-depth: 28x28x1 -> 14x14x4 for p = 2) and unfolds its
  output the same way, so no layer runs at full resolution. Level i runs at
  resolution H / (p * 2**i) with channels * channel_mult[i] channels, so H and
  W must be multiples of p * 2**(len(channel_mult) - 1).
  """
  image_shape: tuple[int, int, int] = (28, 28, 1)
  num_classes: int = 10
  channels: int = 32
  channel_mult: tuple[int, ...] = (1, 2, 2)
  blocks_per_level: int = 2
  attention: bool = True  # self-attention in the blocks of the lowest resolution
  dropout: float = 0.0
  # P(label -> null class) in training, for guidance: read by the loss, not the network.
  label_dropout: float = 0.1
  patch: int = 1

  @property
  def null_label(self) -> int:
    return self.num_classes


UNET_SIZES: dict[str, dict] = {
    # CPU tests: 10k parameters at 28x28x1. One level, no resampling or attention:
    # a test's time is mostly XLA compiling, which grows with the layers.
    "tiny": dict(channels=8, channel_mult=(1,), blocks_per_level=1, attention=False),
    # CPU-scale experiments: two levels (28 and 14), no attention; 44k parameters at 28x28x1.
    "cpu": dict(channels=8, channel_mult=(1, 2), blocks_per_level=1, attention=False),
    # CPU runs: the reference at 3/8 of its width, 220k parameters at 28x28x1.
    "small": dict(channels=12, channel_mult=(2, 2), blocks_per_level=2, attention=True),
    # CPU experiments and the shipped public model: 2x2 patches (28x28x1 runs as
    # 14x14x4, then 7x7), wider layers at lower resolution, attention at 7x7 only;
    # 763k parameters at 28x28x1 (3.5x "small"'s) for 1.8x fewer FLOPs per
    # training step (XLA's count, benchmarks/unet_step.py).
    "fast": dict(channels=32, channel_mult=(1, 2), blocks_per_level=1, attention=True, patch=2),
    # GPU runs: the same layout 4x wider, two blocks per level.
    "gpu": dict(channels=128, channel_mult=(1, 2), blocks_per_level=2, attention=True, patch=2),
    # DPImageBench's PrivImage FashionMNIST network (ch_mult [2, 2], attention at
    # 14x14; 32 channels and 2 blocks assumed): 1.55M parameters at 28x28x1.
    "reference": dict(channels=32, channel_mult=(2, 2), blocks_per_level=2, attention=True),
}


count_params = ntk.num_params  # the repo's parameter counter, under the name callers look for


def unet_config(size: str, image_shape, num_classes: int, **overrides) -> UNetConfig:
  """The UNetConfig of a named size (`UNET_SIZES`) for these images and classes."""
  if size not in UNET_SIZES:
    raise ValueError(f"UNet size must be one of {sorted(UNET_SIZES)}, got {size!r}")
  return UNetConfig(image_shape=tuple(image_shape), num_classes=num_classes,
                    **{**UNET_SIZES[size], **overrides})


def _conv_layer(matmul: bool):
  return MatmulConv if matmul else nn.Conv


def _group_norm(channels: int) -> nn.GroupNorm:
  # EDM: groups of at least 4 channels, at most 32 groups; the count must divide.
  groups = min(32, max(channels // 4, 1))
  while channels % groups:
    groups -= 1
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5)


def _downsample(x: jax.Array) -> jax.Array:
  # 2x2 average: EDM's resample_filter [1, 1].
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _upsample(x: jax.Array) -> jax.Array:
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def space_to_depth(x: jax.Array, patch: int) -> jax.Array:
  """[N, H, W, C] -> [N, H/p, W/p, p*p*C]: each p x p block of pixels becomes one pixel."""
  if patch == 1:
    return x
  n, h, w, c = x.shape
  x = x.reshape(n, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(n, h // patch, w // patch, patch * patch * c)


def depth_to_space(x: jax.Array, patch: int) -> jax.Array:
  """The inverse of `space_to_depth`."""
  if patch == 1:
    return x
  n, h, w, c = x.shape
  c_out = c // (patch * patch)
  x = x.reshape(n, h, w, patch, patch, c_out).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(n, h * patch, w * patch, c_out)


def positional_embedding(c_noise: jax.Array, channels: int, max_positions: int = 10000):
  """[cos, sin] of c_noise at `channels` // 2 geometric frequencies (EDM, endpoint=True)."""
  half = channels // 2
  freqs = (1.0 / max_positions) ** (jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
  angles = c_noise.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class Attention(nn.Module):
  """Self-attention over the pixels of one example, residual (EDM's UNetBlock attention).

  The 1x1 projections are Dense layers over the channel axis and the heads are
  batched matmuls: the same network as 1x1 convolutions, but XLA:CPU runs the
  block's gradient about 2x faster this way (measured at 7x7x64, batch 128).
  """
  channels: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    heads = max(1, c // 64)
    qkv = nn.Dense(3 * c, kernel_init=_attention_init, name="qkv")(_group_norm(c)(x))
    # [n, heads, pixels, 3 * c / heads]
    qkv = qkv.reshape(n, h * w, heads, 3 * c // heads).transpose(0, 2, 1, 3)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    weights = jax.nn.softmax(jnp.matmul(q, k.swapaxes(-1, -2)) / math.sqrt(c // heads), -1)
    a = jnp.matmul(weights, v).transpose(0, 2, 1, 3).reshape(n, h, w, c)
    return x * _SKIP_SCALE + nn.Dense(c, kernel_init=_near_zero, name="proj")(a)


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, the embedding added between, optionally resampled.

  The skip path gets the same resampling and a 1x1 conv when the shape changes.
  """
  channels: int
  resample: str | None = None  # None, "down" or "up"
  attention: bool = False
  dropout: float = 0.0
  matmul_convs: bool = False  # UNet.matmul_convs

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    resample = {None: lambda a: a, "down": _downsample, "up": _upsample}[self.resample]
    conv = _conv_layer(self.matmul_convs)
    skip = resample(x)
    if skip.shape[-1] != self.channels:
      skip = conv(self.channels, (1, 1), kernel_init=_xavier, name="skip")(skip)
    h = resample(nn.silu(_group_norm(x.shape[-1])(x)))
    h = conv(self.channels, (3, 3), kernel_init=_xavier, name="conv0")(h)
    h = h + nn.Dense(self.channels, kernel_init=_xavier, name="affine")(emb)[:, None, None, :]
    h = nn.silu(_group_norm(self.channels)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.channels, (3, 3), kernel_init=_near_zero, name="conv1")(h)
    x = h + skip * _SKIP_SCALE
    if self.attention:
      x = Attention(self.channels)(x)
    return x


class UNet(nn.Module):
  """F(x, c_noise, labels): x [B, H, W, C] float, c_noise [B], labels [B] int in
  [0, num_classes] -> [B, H, W, C]. Nothing is shared across the batch axis.

  `matmul_convs`: every convolution as matmuls (`layers.MatmulConv`), same parameters.
  For per-example gradients of the convolutions' kernels (full DP-SGD): on XLA:CPU
  those are grouped convolutions otherwise, and the DP step ran 1.4x faster this way
  (`benchmarks.unet_step`), while the ordinary batch step runs faster without.
  """
  config: UNetConfig
  matmul_convs: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, c_noise: jax.Array, labels: jax.Array,
               train: bool = False, cond: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    levels = len(cfg.channel_mult)
    height, width, out_channels = cfg.image_shape
    if x.shape[1:] != tuple(cfg.image_shape):
      raise ValueError(f"UNet built for images {tuple(cfg.image_shape)}, got {x.shape[1:]}")
    factor = cfg.patch * 2 ** (levels - 1)
    if height % factor or width % factor:
      raise ValueError(f"{height}x{width} images need sides divisible by {factor} "
                       f"for {levels} levels of {cfg.patch}x{cfg.patch} patches")
    noise_channels, emb_channels = cfg.channels, 4 * cfg.channels
    emb = positional_embedding(c_noise, noise_channels)
    table = nn.Embed(cfg.num_classes + 1, noise_channels, name="label_embed")
    # cond [B, token_dim]: conditioning tokens given directly, in place of the labels' rows.
    emb = emb + (table(labels) if cond is None else cond.astype(emb.dtype))
    emb = nn.silu(nn.Dense(emb_channels, kernel_init=_xavier, name="emb0")(emb))
    emb = nn.silu(nn.Dense(emb_channels, kernel_init=_xavier, name="emb1")(emb))

    def block(channels, resample=None, attention=False):
      return ResBlock(channels, resample, attention, cfg.dropout, self.matmul_convs)

    conv = _conv_layer(self.matmul_convs)

    # Encoder: every output is kept for the decoder's skip connections.
    x = space_to_depth(x, cfg.patch)
    h = conv(cfg.channels * cfg.channel_mult[0], (3, 3), kernel_init=_xavier, name="conv_in")(x)
    skips = [h]
    for level, mult in enumerate(cfg.channel_mult):
      lowest = cfg.attention and level == levels - 1
      if level > 0:
        h = block(h.shape[-1], "down")(h, emb, train)
        skips.append(h)
      for _ in range(cfg.blocks_per_level):
        h = block(cfg.channels * mult, attention=lowest)(h, emb, train)
        skips.append(h)

    # Decoder: one block more per level than the encoder, each eating one skip.
    for level in reversed(range(levels)):
      mult = cfg.channel_mult[level]
      if level == levels - 1:
        h = block(h.shape[-1], attention=cfg.attention)(h, emb, train)
        h = block(h.shape[-1])(h, emb, train)
      else:
        h = block(h.shape[-1], "up")(h, emb, train)
      for _ in range(cfg.blocks_per_level + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(cfg.channels * mult, attention=cfg.attention and level == levels - 1)(
            h, emb, train)
    h = nn.silu(_group_norm(h.shape[-1])(h))
    h = conv(out_channels * cfg.patch**2, (3, 3), kernel_init=_near_zero, name="conv_out")(h)
    return depth_to_space(h, cfg.patch)


# The parts that carry the conditioning (DP-LDM fine-tunes these in a latent
# diffusion model): the label table, the noise-embedding MLP, each block's
# projection of the embedding, and the attention layers.
_CONDITIONING = ("/label_embed/", "/emb0/", "/emb1/", "/affine/", "/Attention_")


def is_conditioning(path: str) -> bool:
  """Whether the parameter at `path` ("ResBlock_3/affine/kernel") is a conditioning one."""
  padded = f"/{path}/"
  return any(part in padded for part in _CONDITIONING)


TRAINABLE = {"all": lambda path: True, "conditioning": is_conditioning}


def init_params(model: UNet, key: jax.Array):
  """The UNet's parameters (initialised on one example: no batch is needed)."""
  h, w, c = model.config.image_shape
  variables = model.init(key, jnp.zeros((1, h, w, c)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  return variables["params"]


def token_dim(config: UNetConfig) -> int:
  """The length of a conditioning token (a row of the label table `label_embed`)."""
  return config.channels


def label_table(params) -> jax.Array:
  """The (num_classes + 1, token_dim) conditioning tokens of a UNet's labels (last: null)."""
  return params["label_embed"]["embedding"]


# Cached by the (hashable, value-equal) model: the same function object lets
# jit-compiled steps that take it as a static argument be reused across runs.
@functools.lru_cache(maxsize=32)
def token_apply_fn(model: UNet) -> Callable:
  """`make_apply_fn`'s call with the tokens as parameters: params {"unet": the UNet's,
  "tokens": (K, token_dim)}, and labels index the tokens. The same EDM loss and
  sampler then train or sample tokens no label of the UNet has (textual inversion)."""
  def apply_fn(params, x, c_noise, labels, dropout_key=None):
    cond = jnp.take(params["tokens"], labels, axis=0)
    kwargs = dict(train=False) if dropout_key is None else dict(
        train=True, rngs={"dropout": dropout_key})
    return model.apply({"params": params["unet"]}, x, c_noise, labels, cond=cond, **kwargs)
  return apply_fn


@functools.lru_cache(maxsize=32)
def make_apply_fn(model: UNet) -> Callable:
  """(params, x, c_noise, labels, dropout_key=None) -> F: the call `diffusion.edm` makes.

  A dropout_key turns training mode (dropout) on; with dropout 0 it changes nothing.
  """
  def apply_fn(params, x, c_noise, labels, dropout_key=None):
    if dropout_key is None:
      return model.apply({"params": params}, x, c_noise, labels, train=False)
    return model.apply({"params": params}, x, c_noise, labels, train=True,
                       rngs={"dropout": dropout_key})
  return apply_fn
