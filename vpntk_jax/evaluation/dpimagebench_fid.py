"""A synthetic set's FID statistics as DPImageBench's evaluator computes them.

DPImageBench (github.com/2019ChenGong/DPImageBench, read at commit 565f8d7) scores a
run's `gen/gen.npz` with `eval.py`, whose FID goes through the `fld` package it
installs (github.com/marcojira/fld, read at ffbbf20):

  - eval.py:17-23 loads x (float NCHW in [0, 1]) and y and calls Evaluator.eval;
    evaluation/evaluator.py:59-60 first resizes x (nearest) to the dataset's
    resolution where its side differs (fmnist_28 / mnist_28: 28).
  - evaluator.py:131-142: fld's InceptionFeatureExtractor; one channel is repeated
    to three, then get_tensor_features. fld/datasets/ImageTensorDataset.py:16-18
    turns each image into a PIL image (torchvision's ToPILImage: x.mul(255).byte(),
    i.e. truncated to uint8), and fld/features/InceptionFeatureExtractor.py:18-23
    back into [0, 1] (ToTensor) for pytorch-fid's InceptionV3 with
    resize_input=True (bilinear to 299 x 299, align_corners=False),
    normalize_input=True (2x - 1), 2048-d pool3 features: pytorch-fid's FID
    Inception weights, the ones `--fid-weights` takes converted.
  - evaluator.py:199 `FID().compute_metric(train_feat, None, gen_feat)`:
    fld/metrics/FID.py:99 takes min(N, 50,000) synthetic rows at random without
    replacement (fld/utils.py:10, an unseeded np.random.choice), and :68-71 fits
    mu = np.mean(features, 0), sigma = np.cov(features, rowvar=False) (float32
    features: mu float32, sigma float64).
  - The reference (evaluator.py:150-173, 199) is the features of the sensitive
    *training* split: the 55,000 of data/dataset_loader.py:38-57 in eval.mode "val"
    (every fmnist_28 / mnist_28 config's mode), cached by fld as
    dataset/<name>_<res>/inception/train.pt (a torch tensor of features, not
    statistics; fld/features/FeatureExtractor.py:40, 61, 75). DPImageBench's only
    statistics file, dataset/<name>/fid_stats_<res>.npz (arrays mu float32 and
    sigma float64; data/preprocess_dataset.py:245-257, 347-350), is of all 60,000
    training images and serves the FID monitored during training
    (models/DP_Diffusion/utils/util.py:96-134).

For a set `vpntk export` wrote, x = pixels / 255 in float32, and truncating
x * 255 gives the pixels back for every value 0..255, so DPImageBench's Inception
sees exactly the run's uint8 images; `dpimagebench_pixels` applies the same
truncation to any gen.npz. What cannot be the same: the float arithmetic (XLA here,
cuDNN there: features agree to float32 rounding, not bit for bit) and the random
50,000 of a larger set (seeded here, unseeded there). The reference statistics are
never computed here: they are of the run's private training images.
"""

from __future__ import annotations

import numpy as np

from vpntk_jax import io_utils
from vpntk_jax.errors import DataError
from vpntk_jax.evaluation import fid

# fld/metrics/FID.py:99: the synthetic rows its FID fits the Gaussian to.
MAX_IMAGES = 50_000


def dpimagebench_pixels(x: np.ndarray) -> np.ndarray:
  """gen.npz's x (float NCHW in [0, 1], C = 1 or 3) -> the uint8 NHWC images
  DPImageBench's Inception sees: torchvision's ToPILImage truncates x * 255."""
  x = np.asarray(x)
  if x.ndim != 4 or x.shape[1] not in (1, 3) or not np.issubdtype(x.dtype, np.floating):
    raise DataError(f"x must be float NCHW with 1 or 3 channels, got {x.dtype} {x.shape}")
  if not (np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0):
    raise DataError("x must lie in [0, 1] (DPImageBench's Inception asserts it)")
  # torch multiplies in the tensor's float32 and byte() truncates towards zero.
  pixels = (x.astype(np.float32) * np.float32(255.0)).astype(np.uint8)
  return np.ascontiguousarray(np.transpose(pixels, (0, 2, 3, 1)))


def subset_rows(num_images: int, seed: int) -> np.ndarray:
  """The rows FID uses: all of them, or MAX_IMAGES drawn without replacement (sorted)."""
  if num_images <= MAX_IMAGES:
    return np.arange(num_images)
  rows = np.random.RandomState(seed).choice(num_images, MAX_IMAGES, replace=False)
  return np.sort(rows)


def synthetic_statistics(feature_fn: fid.FeatureFn, x: np.ndarray, *, seed: int,
                         batch_size: int = fid.FEATURES_BATCH_SIZE
                         ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu float32 (F,), sigma float64 (F, F), images used) of gen.npz's x, as
  DPImageBench's evaluator fits them (module docstring)."""
  rows = subset_rows(len(x), seed)
  features = fid.features_in_batches(feature_fn, dpimagebench_pixels(x[rows]), batch_size)
  mu, sigma = fid.gaussian_statistics(features)
  return mu.astype(np.float32), sigma, len(rows)


def save_statistics(path, mu: np.ndarray, sigma: np.ndarray) -> None:
  """An .npz with arrays `mu` (float32) and `sigma` (float64): the keys and dtypes of
  DPImageBench's fid_stats_<res>.npz (np.savez(mu=..., sigma=...) of float32
  features' np.mean and np.cov)."""
  io_utils.save_npz_atomic(path, mu=np.asarray(mu, np.float32),
                           sigma=np.asarray(sigma, np.float64))
