"""VGG16 / VGG19 conv stacks as public feature extractors for DP-MEPF.

The original DP-MEPF (Harder et al., 2023) takes as perceptual features the
outputs of all conv layers of torchvision's ImageNet VGG19, BEFORE their
ReLU, flattened and concatenated: 303,104 features for a 32x32 image.
`VGGFeatures` is that network in Flax for either depth (a config per depth:
16 has 2, 2, 3, 3, 3 convs per block, 19 has 2, 2, 4, 4, 4), with the input
preprocessing its weights were trained with:

- "torchvision": RGB in [0, 1], ImageNet mean/std (torchvision's vgg19;
  `params_from_torchvision`, `python -m vpntk_jax.convert_vgg`).
- "caffe": BGR in [0, 255] minus the Caffe mean pixel, no scaling (the
  original VGG16 and HED; `params_from_keras_h5`, `vpntk public vgg16`).

A converted directory holds an extractor only (no generator, no classifier
head), so vp-ntk and the semantic query refuse it.

Inputs: NHWC in [0, 1]. Grayscale is repeated to RGB, images smaller than
32x32 are resized up to 32 (bilinear; four 2x2 max-pools need >= 16, and
32 is what the original used), then normalised as the weights expect.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vpntk_jax.models.layers import PATCH_CHUNK_BYTES, MatmulConv, max_pool_2x2

# Convs per block (each block ends in a 2x2 max-pool, the last one left out:
# only the conv outputs are features).
BLOCK_CONVS = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
PREPROCESSING = ("torchvision", "caffe")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original VGG's (and HED's) mean pixel, BGR order, on the [0, 255] scale.
CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
MIN_SIZE = 32


def kind(depth: int) -> str:
  """public.json's extractor kind of a VGG of this depth."""
  return f"vgg{depth}"


def config(depth: int, widths: tuple[int, ...] = WIDTHS) -> tuple:
  """torchvision's cfg list for this depth: conv widths, "M" = 2x2 max-pool."""
  if depth not in BLOCK_CONVS:
    raise ValueError(f"VGG depth must be one of {sorted(BLOCK_CONVS)}, got {depth!r}")
  if len(widths) != 5 or not all(isinstance(w, int) and w >= 1 for w in widths):
    raise ValueError(f"VGG widths are 5 positive integers (one per block), got {widths!r}")
  out = []
  for convs, width in zip(BLOCK_CONVS[depth], widths):
    out += [width] * convs + ["M"]
  return tuple(out[:-1])


def conv_layers(depth: int, widths: tuple[int, ...] = WIDTHS
                ) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
  """(torchvision features index, in channels, out channels) of each conv, and
  the indices of each block's last conv (followed by a pool, or the end)."""
  cfg = config(depth, widths)
  layers, ends, index, channels = [], [], 0, 3
  for v, nxt in zip(cfg, cfg[1:] + ("M",)):
    if v == "M":
      index += 1
      continue
    layers.append((index, channels, v))
    if nxt == "M":
      ends.append(index)
    channels, index = v, index + 2  # conv, then its ReLU
  return tuple(layers), tuple(ends)


# VGG19's, as torchvision's vgg19 (the converter of its state dict reads them).
KIND = kind(19)
CONFIG = config(19)
CONV_LAYERS, BLOCK_ENDS = conv_layers(19)


def _side(size: int) -> int:
  return max(int(size), MIN_SIZE)


def preprocess(x: jax.Array, preprocessing: str = "torchvision") -> jax.Array:
  """NHWC in [0, 1], 1 or 3 channels -> normalised 3-channel input, at least 32x32."""
  x = jnp.asarray(x, jnp.float32)
  n, h, w, c = x.shape
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)
  elif c != 3:
    raise ValueError(f"VGG takes 1 or 3 channels, got {c}")
  if h < MIN_SIZE or w < MIN_SIZE:
    x = jax.image.resize(x, (n, _side(h), _side(w), 3), method="bilinear")
  if preprocessing == "torchvision":
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  if preprocessing == "caffe":
    return x[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR)
  raise ValueError(f"VGG preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}")


class VGGFeatures(nn.Module):
  """A VGG conv stack (torchvision's layer order); features are every conv's pre-ReLU output.

  `features="maps"`: each conv output flattened (NHWC order), concatenated
  (DP-MEPF). `features="pooled"`: the spatial mean of each block's last conv
  output, concatenated (1,472 at any size and either depth; the FID helper's
  features). Not all layers (4,224 for VGG16, 5,504 for VGG19): the FID's
  covariance square root is cubic in the dimension. There is no classifier
  head, so None (logits) is refused.

  `widths` (one per block) exist for tests at tiny sizes; converted weights
  have the standard (64, 128, 256, 512, 512). `conv_chunk_bytes` is the convs'
  `layers.conv3x3_same` chunk on CPU (None: whole batches; same result).
  """
  depth: int = 19
  preprocessing: str = "torchvision"
  widths: tuple[int, ...] = WIDTHS
  conv_chunk_bytes: int | None = PATCH_CHUNK_BYTES

  @nn.compact
  def __call__(self, x: jax.Array, features: str | None = "maps") -> jax.Array:
    if features not in ("pooled", "maps"):
      raise ValueError(f"VGGFeatures gives features 'pooled' or 'maps' (it has no classifier "
                       f"head), got {features!r}")
    x = preprocess(x, self.preprocessing)
    layers, ends = conv_layers(self.depth, tuple(self.widths))
    out, layers = [], iter(layers)
    for v in config(self.depth, tuple(self.widths)):
      if v == "M":
        x = max_pool_2x2(x)
        continue
      index, _, width = next(layers)
      y = MatmulConv(width, chunk_bytes=self.conv_chunk_bytes, name=f"features_{index}")(x)
      if features == "maps":
        out.append(y.reshape(y.shape[0], -1))
      elif index in ends:
        out.append(jnp.mean(y, axis=(1, 2)))
      x = nn.relu(y)
    return jnp.concatenate(out, axis=-1)

  def feature_dim(self, image_size: int, features: str = "pooled") -> int:
    """Feature count for image_size x image_size inputs (pooled: as ConvExtractor's)."""
    layers, ends = conv_layers(self.depth, tuple(self.widths))
    if features == "pooled":
      return sum(width for index, _, width in layers if index in ends)
    side, total = _side(image_size), 0
    for v in config(self.depth, tuple(self.widths)):
      if v == "M":
        side //= 2
      else:
        total += v * side * side
    return total

  def spec(self) -> dict:
    """What public.json records to rebuild this module (`from_spec`)."""
    return {"kind": kind(self.depth), "preprocessing": self.preprocessing,
            "widths": list(self.widths)}


def from_spec(spec: Mapping[str, Any]) -> VGGFeatures:
  """The module a public.json "extractor" entry describes (kind "vgg16" or "vgg19";
  entries written before VGG16 existed have neither preprocessing nor widths)."""
  depth = int(str(spec["kind"])[len("vgg"):])
  return VGGFeatures(depth=depth, preprocessing=spec.get("preprocessing", "torchvision"),
                     widths=tuple(int(w) for w in spec.get("widths", WIDTHS)))


KINDS = tuple(kind(d) for d in BLOCK_CONVS)


def params_from_torchvision(state_dict: Mapping[str, Any]) -> dict:
  """torchvision vgg19 state dict (arrays or CPU tensors) -> VGGFeatures(19) params.

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
    arrays[key] = _checked(key, value, shape)
  return {f"features_{index}": {
      "kernel": np.ascontiguousarray(np.transpose(arrays[f"features.{index}.weight"],
                                                  (2, 3, 1, 0))),
      "bias": arrays[f"features.{index}.bias"]} for index, _, _ in CONV_LAYERS}


def _checked(key: str, value, shape: tuple) -> np.ndarray:
  value = np.asarray(value)
  if value.shape != shape:
    raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
  if not np.all(np.isfinite(value)):
    raise ValueError(f"{key!r} has non-finite values")
  return value.astype(np.float32)


def keras_h5_names(depth: int) -> list[tuple[str, str]]:
  """(kernel, bias) dataset paths of each conv, in order, in a Keras 3 .weights.h5
  whose model holds the convs as Sequential blocks `block1`..`block5` (HED's
  layout): block{b}/layers/conv2d{_i}/vars/{0: kernel HWIO, 1: bias}."""
  names = []
  for block, convs in enumerate(BLOCK_CONVS[depth], start=1):
    for i in range(convs):
      layer = f"block{block}/layers/conv2d" + (f"_{i}" if i else "")
      names.append((f"{layer}/vars/0", f"{layer}/vars/1"))
  return names


def widths_from_keras_h5(arrays: Mapping[str, Any], depth: int = 16) -> tuple[int, ...]:
  """The block widths the conv kernels in `arrays` (path -> array) have."""
  names = keras_h5_names(depth)
  missing = [k for pair in names for k in pair if k not in arrays]
  if missing:
    raise ValueError(f"missing dataset {missing[0]!r} ({len(missing)} in all): not a VGG{depth} "
                     f"in HED's Keras layout (block1..5/layers/conv2d*/vars/0, 1)")
  widths, first = [], 0
  for convs in BLOCK_CONVS[depth]:
    widths.append(int(np.shape(arrays[names[first][0]])[-1]))
    first += convs
  return tuple(widths)


def params_from_keras_h5(arrays: Mapping[str, Any], depth: int = 16,
                         widths: tuple[int, ...] | None = None) -> dict:
  """Keras VGG conv weights (path -> array, `keras_h5_names`' paths) -> VGGFeatures params.

  Keras' Conv2D kernel is (kh, kw, I, O) and cross-correlates, as Flax's Conv:
  copied as it is. Widths default to those the kernels have; each shape is checked.

  Raises:
    ValueError: naming the dataset, when one is missing, has the wrong shape or
      non-finite values.
  """
  widths = widths_from_keras_h5(arrays, depth) if widths is None else tuple(widths)
  layers, _ = conv_layers(depth, widths)
  params = {}
  for (index, cin, cout), (kernel, bias) in zip(layers, keras_h5_names(depth)):
    params[f"features_{index}"] = {"kernel": _checked(kernel, arrays[kernel], (3, 3, cin, cout)),
                                   "bias": _checked(bias, arrays[bias], (cout,))}
  return params
