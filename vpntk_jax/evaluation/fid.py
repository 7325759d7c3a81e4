"""Frechet (FID) and kernel (KID) distances between image sets in any feature space.

The distances take features from any extractor: a classifier trained on public
data, or the InceptionV3 below, a Flax port of pytorch-fid's "FID Inception"
(pool3, 2048-d), which gives the standard FID/KID numbers once its weights are loaded.

Weights. The library never downloads anything. The standard weights are
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (TensorFlow's 2015 FID
Inception ported to PyTorch). In Colab, where torch is preinstalled:

  import numpy as np, torch
  from vpntk_jax.evaluation import fid
  url = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
         "pt_inception-2015-12-05-6726825d.pth")
  state_dict = torch.hub.load_state_dict_from_url(url, map_location="cpu")
  arrays = fid.convert_pytorch_fid_state_dict({k: v.numpy() for k, v in state_dict.items()})
  np.savez("fid_inception.npz", **arrays)

then, anywhere:

  feature_fn = fid.inception_feature_fn(fid.load_inception_params("fid_inception.npz"))
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
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import traverse_util

from vpntk_jax import arrays
from vpntk_jax.errors import ConfigError, DataError

FEATURES_BATCH_SIZE = 256
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
# TensorFlow's BatchNorm epsilon, kept by the PyTorch port.
BN_EPS = 1e-3
SEP = "/"
# A covariance eigenvalue below -this * (largest |eigenvalue|) is not rounding
# error: the matrix is not a covariance.
NEGATIVE_EIG_RTOL = 1e-6

Variables = dict[str, Any]
FeatureFn = Callable[[Any], Any]


# ---------------------------------------------------------------- distances


def _check_features(features: np.ndarray, name: str = "features") -> np.ndarray:
  features = np.asarray(features, dtype=np.float64)
  if features.ndim != 2:
    raise DataError(f"{name} must be 2-D (num, dim), got shape {features.shape}")
  if features.shape[0] < 2:
    raise DataError(f"{name} need at least 2 rows for a covariance, got {features.shape[0]}")
  if not np.isfinite(features).all():
    raise DataError(f"{name} contain NaN or infinite values")
  return features


def gaussian_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean (F,) and unbiased covariance (F, F), float64, of (N, F) features, N >= 2."""
  features = _check_features(features)
  # atleast_2d: np.cov of a single feature column returns a 0-d array.
  return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise DataError(
      f"{name}: mean must be (d,) and covariance (d, d), got {mu.shape} and {sigma.shape}"
    )
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise DataError(f"{name}: mean or covariance contains NaN or infinite values")
  return mu, sigma


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((sigma + sigma.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr(sqrtm(sigma1 @ sigma2)) for covariance matrices.

  Computed as sum sqrt(eig(S1^1/2 S2 S1^1/2)): that matrix is symmetric PSD
  with the same eigenvalues as S1 S2, so there are no complex roots and no
  failures on the rank-deficient covariances of few or collapsed samples
  (scipy's sqrtm of the non-symmetric product can return large imaginary
  parts there). Eigenvalues below 0 are rounding error and count as 0; a
  matrix with clearly negative eigenvalues is not a covariance: error.
  """
  for name, s in (("first", sigma1), ("second", sigma2)):
    w = np.linalg.eigvalsh((s + s.T) / 2)
    if w.min() < -NEGATIVE_EIG_RTOL * max(abs(w).max(), np.finfo(np.float64).tiny):
      raise DataError(f"the {name} covariance has a negative eigenvalue {w.min():.3g}: it is "
                      f"not positive semi-definite")
  root = _psd_sqrt(sigma1)
  middle = root @ sigma2 @ root
  eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  return float(np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None))))


def frechet_distance(
  mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
  """Frechet distance of N(mu1, sigma1) and N(mu2, sigma2).

  ||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)). Not clamped: a
  tiny negative value is rounding error around 0. The trace of the square root
  is exact for rank-deficient covariances (no eps offset, unlike pytorch-fid,
  whose offset lowers the result by about 2 * d * eps when it triggers).
  """
  mu1, sigma1 = _check_gaussian(mu1, sigma1, "first Gaussian")
  mu2, sigma2 = _check_gaussian(mu2, sigma2, "second Gaussian")
  if mu1.shape != mu2.shape:
    raise DataError(f"the Gaussians differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
  diff = mu1 - mu2
  covariance_term = np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(
    sigma1, sigma2)
  return float(diff @ diff + covariance_term)


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
  """Frechet distance between Gaussians fitted to two (N, F) feature sets."""
  feats_a = _check_features(feats_a, "features a")
  feats_b = _check_features(feats_b, "features b")
  if feats_a.shape[1] != feats_b.shape[1]:
    raise DataError(f"feature sets differ in dimension: {feats_a.shape[1]} vs {feats_b.shape[1]}")
  return frechet_distance(*gaussian_statistics(feats_a), *gaussian_statistics(feats_b))


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of two equal-size samples under k(x, y) = (x.y / d + 1)^3."""
  m, dim = x.shape
  k_xx = (x @ x.T / dim + 1.0) ** 3
  k_yy = (y @ y.T / dim + 1.0) ** 3
  k_xy = (x @ y.T / dim + 1.0) ** 3
  # The diagonals k(x_i, x_i) are what makes the plain V-statistic biased.
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2.0 * k_xy.mean())


def kernel_inception_distance(
  feats_a: np.ndarray,
  feats_b: np.ndarray,
  *,
  num_subsets: int = 10,
  subset_size: int = 1000,
  seed: int = 0,
) -> tuple[float, float]:
  """KID: mean and std of the unbiased polynomial MMD^2 over random subsets.

  Each subset draws `subset_size` rows of each set without replacement; the size
  is capped at the smaller set. With the cap reached, subsets differ only in order
  and the std is 0.
  """
  feats_a = _check_features(feats_a, "features a")
  feats_b = _check_features(feats_b, "features b")
  if feats_a.shape[1] != feats_b.shape[1]:
    raise DataError(f"feature sets differ in dimension: {feats_a.shape[1]} vs {feats_b.shape[1]}")
  if num_subsets < 1:
    raise ConfigError(f"num_subsets must be >= 1, got {num_subsets}")
  if subset_size < 2:
    raise ConfigError(f"subset_size must be >= 2, got {subset_size}")
  size = min(subset_size, feats_a.shape[0], feats_b.shape[0])
  rng = np.random.default_rng(seed)
  values = [
    polynomial_mmd2(
      feats_a[rng.choice(feats_a.shape[0], size, replace=False)],
      feats_b[rng.choice(feats_b.shape[0], size, replace=False)],
    )
    for _ in range(num_subsets)
  ]
  return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- features


def _check_images(images: Any) -> None:
  if np.dtype(images.dtype) != np.uint8 or images.ndim != 4:
    raise DataError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")


def features_in_batches(
  feature_fn: FeatureFn, images: np.ndarray, batch_size: int = FEATURES_BATCH_SIZE
) -> np.ndarray:
  """(N, F) float64 features of uint8 NHWC images, in fixed-size zero-padded batches.

  Every call of `feature_fn` sees min(batch_size, N) rows, so a jitted function
  compiles once per image shape; padding rows are cut from the output.
  """
  images = np.asarray(images)
  _check_images(images)
  if images.shape[0] == 0:
    raise DataError("no images to compute features of")
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
  batch_size = min(batch_size, images.shape[0])
  chunks = []
  for rows in arrays.consecutive_rows(images.shape[0], batch_size):
    batch, _ = arrays.padded_chunk(images, rows, batch_size)
    features = np.asarray(feature_fn(batch))
    if features.ndim != 2 or features.shape[0] != batch_size:
      raise DataError(
        f"feature_fn must map {batch_size} images to ({batch_size}, F), got {features.shape}"
      )
    chunks.append(features[: len(rows)].astype(np.float64))
  return np.concatenate(chunks)


def fid_kid(
  feature_fn: FeatureFn,
  images_a: np.ndarray,
  images_b: np.ndarray,
  *,
  batch_size: int = FEATURES_BATCH_SIZE,
  num_subsets: int = 10,
  subset_size: int = 1000,
  seed: int = 0,
) -> dict:
  """FID and KID between two uint8 NHWC image sets in the feature space of `feature_fn`."""
  feats_a = features_in_batches(feature_fn, images_a, batch_size)
  feats_b = features_in_batches(feature_fn, images_b, batch_size)
  kid_mean, kid_std = kernel_inception_distance(
    feats_a, feats_b, num_subsets=num_subsets, subset_size=subset_size, seed=seed
  )
  return {
    "fid": fid_from_features(feats_a, feats_b),
    "kid_mean": kid_mean,
    "kid_std": kid_std,
    "kid_subset_size": min(subset_size, feats_a.shape[0], feats_b.shape[0]),
    "num_a": int(feats_a.shape[0]),
    "num_b": int(feats_b.shape[0]),
  }


# ---------------------------------------------------------------- InceptionV3


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
  with `features_in_batches` or `fid_kid`.
  """
  variables = jax.device_put(
    {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  )
  network = _network_fn()

  def feature_fn(images: Any) -> jax.Array:
    _check_images(images)
    return network(variables, _preprocess_fn(images))

  return feature_fn
