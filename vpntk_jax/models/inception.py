"""pytorch-fid's "FID Inception" in Flax: InceptionV3 up to pool3 (2048-d features).

The network behind the standard FID/KID numbers (`vpntk_jax.evaluation.fid`
computes the distances, in this or any feature space): the Inception blocks,
the pytorch-fid preprocessing, and its variables: random init (for tests),
loading from .npz, and conversion from pytorch-fid's state dict.

Weights. The library never downloads anything. The standard weights are
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (TensorFlow's 2015 FID
Inception ported to PyTorch). In Colab, where torch is preinstalled:

  import numpy as np, torch
  from vpntk_jax.models import inception
  url = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
         "pt_inception-2015-12-05-6726825d.pth")
  state_dict = torch.hub.load_state_dict_from_url(url, map_location="cpu")
  arrays = inception.convert_pytorch_fid_state_dict(
      {k: v.numpy() for k, v in state_dict.items()})
  np.savez("fid_inception.npz", **arrays)

then, anywhere:

  from vpntk_jax.evaluation import fid
  feature_fn = inception.inception_feature_fn(
      inception.load_inception_params("fid_inception.npz"))
  scores = fid.fid_kid(feature_fn, real_images, synthetic_images)

The .npz naming: one array per Flax variable, named by its collection and module
path joined with '/', e.g. `params/Mixed_5b/branch1x1/conv/kernel` (HWIO),
`params/Mixed_5b/branch1x1/bn/scale`, `params/.../bn/bias`,
`batch_stats/.../bn/mean` and `batch_stats/.../bn/var`. Module names are
pytorch-fid's, so `Mixed_5b.branch1x1.conv.weight` there is
`params/Mixed_5b/branch1x1/conv/kernel` here. `expected_inception_shapes()` lists
every name with its shape.

Preprocessing follows pytorch-fid: uint8 [0, 255] -> [0, 1], bilinear resize to
299x299 (half-pixel centres, no antialiasing, as torch's align_corners=False),
then [-1, 1]; grayscale is repeated to 3 channels.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from vpntk_jax.errors import DataError

INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
# TensorFlow's BatchNorm epsilon, kept by the PyTorch port.
BN_EPS = 1e-3
SEP = "/"

Variables = dict[str, Any]


def _check_images(images: Any) -> None:
  # The same input check as vpntk_jax.evaluation.fid's (which imports no network).
  if np.dtype(images.dtype) != np.uint8 or images.ndim != 4:
    raise DataError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")


class BasicConv(nn.Module):
  """Bias-free conv -> inference BatchNorm (eps 1e-3) -> relu; torch-style symmetric padding."""

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad_h, pad_w = self.padding
    x = nn.Conv(
      self.features, self.kernel_size, self.strides, padding=((pad_h, pad_h), (pad_w, pad_w)),
      use_bias=False,
      # TF32 on recent GPUs would shift the features, and FID with them.
      precision=jax.lax.Precision.HIGHEST, name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TensorFlow's average pool ignores padded zeros (FID Inception's A/C/E_1 patch).
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """FIDInceptionA: 1x1, 5x5, double 3x3 and avg-pool branches."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17: strided 3x3, double 3x3 and max-pool branches."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(384, (3, 3), (2, 2), name="branch3x3")(x)
    bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC: factorised 7x7 branches and an avg-pool branch."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
    b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = BasicConv(c7, **row, name="branch7x7_2")(b7)
    b7 = BasicConv(192, **col, name="branch7x7_3")(b7)
    bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = BasicConv(c7, **col, name="branch7x7dbl_2")(bd)
    bd = BasicConv(c7, **row, name="branch7x7dbl_3")(bd)
    bd = BasicConv(c7, **col, name="branch7x7dbl_4")(bd)
    bd = BasicConv(192, **row, name="branch7x7dbl_5")(bd)
    bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8: 3x3 and 7x7-then-3x3 strided branches, max-pool branch."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = BasicConv(320, (3, 3), (2, 2), name="branch3x3_2")(b3)
    b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (avg pool) or FIDInceptionE_2 (`max_pool=True`)."""

  max_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    row, col = dict(kernel_size=(1, 3), padding=(0, 1)), dict(kernel_size=(3, 1), padding=(1, 0))
    b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, **row, name="branch3x3_2a")(b3),
        BasicConv(384, **col, name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, **row, name="branch3x3dbl_3a")(bd),
        BasicConv(384, **col, name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    # The FID Inception's last block max-pools here (a quirk of the TF graph, kept for parity).
    pooled = _max_pool_3x3(x) if self.max_pool else _avg_pool_3x3(x)
    bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 up to pool3: (N, H, W, 3) in [-1, 1] -> (N, 2048)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = BasicConv(32, (3, 3), (2, 2), name="Conv2d_1a_3x3")(x)
    x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x = InceptionC(160, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    return x.mean(axis=(1, 2))


def inception_v3() -> FIDInceptionV3:
  """The FID InceptionV3 module; its variables are {"params", "batch_stats"}."""
  return FIDInceptionV3()


def preprocess_images(images: jax.Array) -> jax.Array:
  """uint8 NHWC (C = 1 or 3) -> float32 (N, 299, 299, 3) in [-1, 1], as pytorch-fid."""
  if images.shape[-1] not in (1, 3):
    raise DataError(f"Inception needs 1 or 3 channels, got images of shape {images.shape}")
  x = images.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  # antialias=False: torch's bilinear interpolate does not low-pass when downsizing.
  x = jax.image.resize(
    x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), "bilinear", antialias=False
  )
  return 2.0 * x - 1.0


@functools.lru_cache(maxsize=1)
def _traced_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
  dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(inception_v3().init, jax.random.key(0), dummy)
  return tuple((name, tuple(s.shape)) for name, s in flatten_variables(shapes).items())


def expected_inception_shapes() -> dict[str, tuple[int, ...]]:
  """Every .npz name of the FID InceptionV3 with its shape (traced, nothing computed)."""
  return dict(_traced_shapes())


def flatten_variables(variables: Mapping) -> dict[str, Any]:
  """{"params": {"Mixed_5b": {...}}} -> {"params/Mixed_5b/...": array} (the .npz naming)."""
  return traverse_util.flatten_dict(dict(variables), sep=SEP)


def _unflatten(flat: Mapping[str, Any]) -> Variables:
  return traverse_util.unflatten_dict(dict(flat), sep=SEP)


def _kernel_name(name: str) -> bool:
  return name.endswith("/kernel")


def init_inception_params(key: jax.Array) -> Variables:
  """Random FID InceptionV3 variables (for tests): He-normal kernels, perturbed BatchNorm."""
  shapes = expected_inception_shapes()
  sizes = [int(np.prod(shape)) for shape in shapes.values()]
  normal_key, uniform_key = jax.random.split(key)
  # Two draws sliced on the host: one random op per array would compile for a minute on CPU.
  normals = np.asarray(jax.random.normal(normal_key, (sum(sizes),)))
  uniforms = np.asarray(jax.random.uniform(uniform_key, (sum(sizes),), minval=0.5, maxval=1.5))
  flat, start = {}, 0
  for (name, shape), size in zip(shapes.items(), sizes):
    stop = start + size
    if _kernel_name(name):
      # He scaling keeps activations O(1) through the ~47 conv-relu layers.
      value = normals[start:stop] * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif name.endswith(("/scale", "/var")):
      # Away from 1 (and 0), so a swapped or dropped BatchNorm array changes the output.
      value = uniforms[start:stop]
    else:
      value = 0.1 * normals[start:stop]
    flat[name] = value.reshape(shape).astype(np.float32)
    start = stop
  return _unflatten(flat)


def check_inception_arrays(flat: Mapping[str, Any], source: str = "arrays") -> None:
  """Raises DataError naming every missing, unexpected or mis-shaped .npz entry."""
  expected = expected_inception_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  mismatched = [
    f"{name}: expected {expected[name]}, got {tuple(np.shape(flat[name]))}"
    for name in sorted(set(expected) & set(flat))
    if tuple(np.shape(flat[name])) != expected[name]
  ]
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing: {', '.join(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected)}")
  if mismatched:
    problems.append(f"{len(mismatched)} with the wrong shape: {'; '.join(mismatched)}")
  if problems:
    raise DataError(f"{source} do not match the FID InceptionV3: " + " | ".join(problems))


def load_inception_params(path: str | os.PathLike) -> Variables:
  """Reads FID InceptionV3 variables from a local .npz in this module's naming."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except (OSError, ValueError, zipfile.BadZipFile) as error:
    raise DataError(f"cannot read Inception weights from {path}: {error}") from error
  check_inception_arrays(flat, source=str(path))
  for name, value in flat.items():
    if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all():
      raise DataError(f"{path}: {name} must be finite floats, got dtype {value.dtype}")
  return _unflatten({name: value.astype(np.float32) for name, value in flat.items()})


# pytorch-fid BatchNorm2d names -> (collection, Flax name).
_BN_NAMES = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def _is_unused_torch_name(name: str) -> bool:
  # fc (1008 logits) and AuxLogits are past pool3; num_batches_tracked is a counter.
  return name.startswith(("fc.", "AuxLogits.")) or name.endswith(".num_batches_tracked")


def _convert_name(name: str) -> str | None:
  """'Mixed_5b.branch1x1.conv.weight' -> 'params/Mixed_5b/branch1x1/conv/kernel', else None."""
  *module, layer, leaf = name.split(".")
  path = SEP.join(module)
  if layer == "conv" and leaf == "weight" and module:
    return f"params/{path}/conv/kernel"
  if layer == "bn" and leaf in _BN_NAMES and module:
    collection, flax_leaf = _BN_NAMES[leaf]
    return f"{collection}/{path}/bn/{flax_leaf}"
  return None


def convert_pytorch_fid_state_dict(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """pytorch-fid's FID Inception state dict (numpy arrays) -> this module's .npz arrays.

  Conv weights go OIHW -> HWIO; BatchNorm weight/bias/running_mean/running_var go to
  scale/bias/mean/var. fc, AuxLogits and num_batches_tracked are dropped; any other
  unknown name, and any missing or mis-shaped array, raises DataError.
  """
  flat, unknown = {}, []
  for name, value in state_dict.items():
    if _is_unused_torch_name(name):
      continue
    flax_name = _convert_name(name)
    if flax_name is None:
      unknown.append(name)
      continue
    value = np.asarray(value, dtype=np.float32)
    if flax_name.endswith("/kernel"):
      if value.ndim != 4:
        raise DataError(f"{name} must be a 4-D OIHW conv weight, got shape {value.shape}")
      value = value.transpose(2, 3, 1, 0)
    flat[flax_name] = value
  if unknown:
    raise DataError(f"unknown pytorch-fid parameter names: {', '.join(sorted(unknown))}")
  check_inception_arrays(flat, source="converted pytorch-fid arrays")
  return flat


@functools.lru_cache(maxsize=1)
def _network_fn() -> Callable:
  model = inception_v3()
  return jax.jit(lambda variables, x: model.apply(variables, x))


# Separate from the network so every input size shares one compiled network.
_preprocess_fn = jax.jit(preprocess_images)


def inception_feature_fn(variables: Variables) -> Callable[[Any], jax.Array]:
  """Returns images (uint8 NHWC, C = 1 or 3, any size) -> (N, 2048) pool3 features.

  Compiles once per batch size (and the cheap resize once per image shape); use it
  with `vpntk_jax.evaluation.fid.features_in_batches` or `fid.fid_kid`.
  """
  variables = jax.device_put(
    {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  )
  network = _network_fn()

  def feature_fn(images: Any) -> jax.Array:
    _check_images(images)
    return network(variables, _preprocess_fn(images))

  return feature_fn
