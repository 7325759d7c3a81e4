"""ImageNet-pretrained VGG19 as a public feature extractor for DP-MEPF.

The original DP-MEPF (Harder et al., 2023) takes as perceptual features the
outputs of all 16 conv layers of torchvision's ImageNet VGG19, BEFORE their
ReLU, flattened and concatenated: 303,104 features for a 32x32 image.
`VGG19Features` is that network in Flax; `params_from_torchvision` converts
torchvision's weights; `python -m vpntk_jax.convert_vgg` writes them as a
public model directory that `vpntk synthesize --method dp-mepf --public-model
DIR` uses (that module says how to get the weights and how the directory's
feature statistics are computed). Such a directory holds an extractor only
(no generator), so vp-ntk refuses it.

Inputs: NHWC in [0, 1]. Grayscale is repeated to RGB, images smaller than
32x32 are resized up to 32 (bilinear; four 2x2 max-pools need >= 16, and
32 is what the original used), then ImageNet-normalised, as torchvision expects.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vpntk_jax.models.layers import max_pool_2x2

KIND = "vgg19"
# torchvision's vgg19 "features" (cfg "E"): conv widths, "M" = 2x2 max-pool.
# The final pool is left out: only the conv outputs are features.
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE = 32


def _conv_layers() -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
  """(torchvision features index, in channels, out channels) of each conv, and
  the indices of each block's last conv (followed by a pool, or the end)."""
  layers, ends, index, channels = [], [], 0, 3
  for v, nxt in zip(CONFIG, CONFIG[1:] + ("M",)):
    if v == "M":
      index += 1
      continue
    layers.append((index, channels, v))
    if nxt == "M":
      ends.append(index)
    channels, index = v, index + 2  # conv, then its ReLU
  return tuple(layers), tuple(ends)


CONV_LAYERS, BLOCK_ENDS = _conv_layers()


def _side(size: int) -> int:
  return max(int(size), MIN_SIZE)


def preprocess(x: jax.Array) -> jax.Array:
  """NHWC in [0, 1], 1 or 3 channels -> ImageNet-normalised RGB, at least 32x32."""
  x = jnp.asarray(x, jnp.float32)
  n, h, w, c = x.shape
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)
  elif c != 3:
    raise ValueError(f"VGG19 takes 1 or 3 channels, got {c}")
  if h < MIN_SIZE or w < MIN_SIZE:
    x = jax.image.resize(x, (n, _side(h), _side(w), 3), method="bilinear")
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class VGG19Features(nn.Module):
  """torchvision's VGG19 conv stack; features are every conv's pre-ReLU output.

  `features="maps"`: each conv output flattened (NHWC order), concatenated
  (DP-MEPF). `features="pooled"`: the spatial mean of each block's last conv
  output, concatenated (1,472 at any size; the FID helper's features). Not all
  16 layers (5,504): the FID's covariance square root is cubic in the
  dimension, about 13x slower there. There is no classifier head, so None
  (logits) is refused.
  """

  @nn.compact
  def __call__(self, x: jax.Array, features: str | None = "maps") -> jax.Array:
    if features not in ("pooled", "maps"):
      raise ValueError(f"VGG19Features gives features 'pooled' or 'maps' (it has no classifier "
                       f"head), got {features!r}")
    x = preprocess(x)
    out, layers = [], iter(CONV_LAYERS)
    for v in CONFIG:
      if v == "M":
        x = max_pool_2x2(x)
        continue
      index, _, width = next(layers)
      y = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{index}")(x)
      if features == "maps":
        out.append(y.reshape(y.shape[0], -1))
      elif index in BLOCK_ENDS:
        out.append(jnp.mean(y, axis=(1, 2)))
      x = nn.relu(y)
    return jnp.concatenate(out, axis=-1)

  def feature_dim(self, image_size: int, features: str = "pooled") -> int:
    """Feature count for image_size x image_size inputs (pooled: as ConvExtractor's)."""
    if features == "pooled":
      return sum(width for index, _, width in CONV_LAYERS if index in BLOCK_ENDS)
    side, total = _side(image_size), 0
    for v in CONFIG:
      if v == "M":
        side //= 2
      else:
        total += v * side * side
    return total


def params_from_torchvision(state_dict: Mapping[str, Any]) -> dict:
  """torchvision vgg19 state dict (arrays or CPU tensors) -> VGG19Features params.

  torch's Conv2d weight is (O, I, kh, kw) and cross-correlates, like Flax's
  Conv with kernel (kh, kw, I, O); so the kernel is a plain transpose.

  Raises:
    ValueError: naming the key, when one is missing, has the wrong shape or
      non-finite values, or when a features.* key is not vgg19's (vgg19_bn).
  """
  expected = {}
  for index, cin, cout in CONV_LAYERS:
    expected[f"features.{index}.weight"] = (cout, cin, 3, 3)
    expected[f"features.{index}.bias"] = (cout,)
  unexpected = sorted(k for k in state_dict if k.startswith("features.") and k not in expected)
  if unexpected:
    raise ValueError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all): not "
                     f"torchvision's vgg19 features (vgg19_bn and other VGGs are not supported)")
  arrays = {}
  for key, shape in expected.items():
    if key not in state_dict:
      raise ValueError(f"missing key {key!r}: expected torchvision's vgg19 state_dict "
                       f"(features.{{i}}.weight / .bias)")
    value = state_dict[key]
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.shape != shape:
      raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{key!r} has non-finite values")
    arrays[key] = value.astype(np.float32)
  return {f"features_{index}": {
      "kernel": np.ascontiguousarray(np.transpose(arrays[f"features.{index}.weight"],
                                                  (2, 3, 1, 0))),
      "bias": arrays[f"features.{index}.bias"]} for index, _, _ in CONV_LAYERS}
