"""Frechet (FID) and kernel (KID) distances between image sets in any feature space.

The distances take features from any extractor: a classifier trained on public
data, or `vpntk_jax.models.inception`, a Flax port of pytorch-fid's "FID
Inception" (pool3, 2048-d), which gives the standard FID/KID numbers once its
weights are loaded (that module says how to get and convert them):

  from vpntk_jax.evaluation import fid
  from vpntk_jax.models import inception
  feature_fn = inception.inception_feature_fn(
      inception.load_inception_params("fid_inception.npz"))
  scores = fid.fid_kid(feature_fn, real_images, synthetic_images)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vpntk_jax import arrays
from vpntk_jax import io_utils
from vpntk_jax.errors import ConfigError, DataError

FEATURES_BATCH_SIZE = 256
# A covariance eigenvalue below -this * (largest |eigenvalue|) is not rounding
# error: the matrix is not a covariance.
NEGATIVE_EIG_RTOL = 1e-6

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


# --- stored statistics (pytorch-fid's and DPImageBench's .npz: arrays mu, sigma) ---

def save_statistics(path, mu: np.ndarray, sigma: np.ndarray) -> None:
  """Writes (mu, sigma) as pytorch-fid does: an .npz with arrays `mu` and `sigma`."""
  mu, sigma = _check_gaussian(mu, sigma, "stats")
  io_utils.save_npz_atomic(path, mu=mu, sigma=sigma)


def load_statistics(path) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a pytorch-fid / DPImageBench statistics .npz."""
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not {"mu", "sigma"} <= set(npz.files):
        raise DataError(f"{path}: a FID statistics file holds arrays 'mu' and 'sigma', "
                        f"found {sorted(npz.files)}")
      mu, sigma = npz["mu"], npz["sigma"]
  except (OSError, ValueError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read FID statistics {path}: {e}") from e
  return _check_gaussian(mu, sigma, str(path))


def fid_against_statistics(feature_fn: FeatureFn, images: np.ndarray, mu: np.ndarray,
                           sigma: np.ndarray, *, batch_size: int = FEATURES_BATCH_SIZE) -> dict:
  """FID of uint8 NHWC `images` against stored reference statistics (KID needs the
  reference features themselves, so there is none)."""
  feats = features_in_batches(feature_fn, images, batch_size)
  if feats.shape[1] != mu.shape[0]:
    raise DataError(f"the statistics are {mu.shape[0]}-d but the features are "
                    f"{feats.shape[1]}-d")
  own_mu, own_sigma = gaussian_statistics(feats)
  return {"fid": frechet_distance(own_mu, own_sigma, mu, sigma), "num_a": int(feats.shape[0])}
