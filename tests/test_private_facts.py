"""Nothing computed from the private data leaves except through a mechanism: the
schema comes from the public test set, the count under add/remove is declared
or released with noise, and exact diagnostics reach only the terminal, marked."""

import dataclasses
import json
import re

import numpy as np
import pytest
from PIL import Image

from vpntk_jax import cli
from vpntk_jax import pipeline
from vpntk_jax.blocks import DataConfig, TrainConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.data import load_dataset, make_dataset
from vpntk_jax.data.schema import Schema, fit_to_schema
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy import diagnostics, read_ledger
from vpntk_jax.stages import mean_embedding

SMALL = dict(ntk_layers=(32, "relu", "layernorm", 4), epsilon=1.0, delta=1e-5)
M = 263  # an odd private size, easy to look for in the stored files


def _arrays(n, num_classes=10, shape=(8, 8, 1), seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, *shape), np.uint8), np.arange(n) % num_classes


@pytest.fixture(scope="module")
def test_set():
  return make_dataset(*_arrays(20), num_classes=10, name="public test")


# --- the schema -----------------------------------------------------------------


def test_a_label_no_other_example_has_does_not_change_the_release_shape(test_set):
  # Neighbours under replace-one: one example relabelled to a class nobody else has.
  images, labels = _arrays(M, num_classes=9)
  relabelled = labels.copy()
  relabelled[0] = 9
  shapes = set()
  for lbls in (labels, relabelled):
    private = make_dataset(images, lbls, name="private")  # alone it would infer max + 1
    fitted, _ = pipeline.load_private_and_test(RunConfig(**SMALL), (private, test_set))
    config = RunConfig(**SMALL, noise_seed=0)
    recipe = pipeline.build_recipe(config, test_set.image_shape, test_set.num_classes)
    statistic = recipe.private_statistic(fitted, config, quiet=True)
    release, _ = recipe.release(statistic, fitted, config, quiet=True)
    shapes.add((fitted.num_classes, release["embedding"].shape))
  assert len(shapes) == 1 and shapes.pop()[0] == 10


def test_private_labels_outside_the_declared_classes_are_an_error(test_set):
  images, labels = _arrays(30, num_classes=11)
  with pytest.raises(DataError, match=r"\[0, 10\).*public test"):
    fit_to_schema(make_dataset(images, labels, name="private"), Schema.of(test_set))


def _folder(root, classes, grey=True, rgb_one=False):
  for c in classes:
    (root / c).mkdir(parents=True)
    for i in range(3):
      pixels = np.full((8, 8), 40 * i, np.uint8)
      img = Image.fromarray(pixels, "L")
      if rgb_one and c == classes[0] and i == 0:
        img = img.convert("RGB")
      img.save(root / c / f"{i}.png")


def test_one_rgb_image_among_grey_ones_is_an_error_not_a_3_channel_run(tmp_path):
  _folder(tmp_path / "data" / "test", ["a", "b"])
  _folder(tmp_path / "data" / "train", ["a", "b"], rgb_one=True)
  config = RunConfig(**SMALL, data=DataConfig(source=str(tmp_path / "data")))
  with pytest.raises(DataError, match="3 channels.*has 1"):
    pipeline.load_private_and_test(config)


def test_private_folders_are_labelled_by_the_test_set_s_class_names(tmp_path):
  _folder(tmp_path / "data" / "test", ["a", "b", "c"])
  _folder(tmp_path / "data" / "train", ["a", "c"])  # no private example of b
  private, test = pipeline.load_private_and_test(
      RunConfig(**SMALL, data=DataConfig(source=str(tmp_path / "data"))))
  assert private.num_classes == 3 and private.class_names == ("a", "b", "c")
  np.testing.assert_array_equal(private.labels, [0, 0, 0, 2, 2, 2])
  (tmp_path / "data" / "train" / "d").mkdir()
  Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "data" / "train" / "d" / "x.png")
  with pytest.raises(DataError, match=r"\['d'\] are not among"):
    pipeline.load_private_and_test(
        RunConfig(**SMALL, data=DataConfig(source=str(tmp_path / "data"))))


def test_grey_private_images_become_rgb_when_the_test_set_is_rgb():
  test = make_dataset(*_arrays(10, shape=(8, 8, 3)), num_classes=10, name="rgb test")
  private = fit_to_schema(make_dataset(*_arrays(10), name="grey"), Schema.of(test))
  assert private.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(private.images[..., 0], private.images[..., 2])


# --- the count under add/remove ----------------------------------------------------


def test_public_num_examples_is_checked():
  with pytest.raises(ConfigError, match="add_remove only"):
    RunConfig(public_num_examples=10).validate()
  with pytest.raises(ConfigError, match=">= 1"):
    RunConfig(adjacency="add_remove", public_num_examples=0).validate()


def _release(config, test_set):
  private = make_dataset(*_arrays(M), num_classes=10, name="private")
  recipe = pipeline.build_recipe(config, test_set.image_shape, test_set.num_classes)
  statistic = recipe.private_statistic(private, config, quiet=True)
  return recipe, recipe.release(statistic, private, config, quiet=True)


def _mentions(value, text):
  return re.search(rf"(?<![\d.]){value}(?![\d.])", text) is not None


def test_add_remove_with_a_declared_count_never_counts_the_private_set(test_set):
  config = RunConfig(**SMALL, adjacency="add_remove", public_num_examples=500, noise_seed=0)
  recipe, (release, ledger) = _release(config, test_set)
  stored = json.dumps(ledger.to_json())
  assert not _mentions(M, stored)
  assert set(release) == {"embedding"}
  record, = ledger.releases
  assert record.num_private_examples == 500 and "declared" in record.num_examples_source
  # sum / 500 with one term more or less: norm_bound / 500, whatever the size.
  assert record.sensitivity == pytest.approx(recipe.features.norm_bound / 500, rel=1e-3)


def test_add_remove_without_a_declared_count_releases_it_with_noise(test_set):
  config = RunConfig(**SMALL, adjacency="add_remove", noise_seed=1)
  _, (release, ledger) = _release(config, test_set)
  count, main = ledger.releases
  assert count.name == mean_embedding.COUNT_RELEASE_NAME and count.shape == (1,)
  assert count.sensitivity == pytest.approx(1.0, rel=1e-3)
  assert count.sigma == pytest.approx(mean_embedding.COUNT_NOISE_SCALE * main.sigma)
  noisy = float(release["private_count"][0])
  assert noisy != M and main.num_private_examples == max(1, round(noisy))
  assert all("released with noise" in r.num_examples_source for r in ledger.releases)
  # Both releases are charged: the composed budget still holds.
  assert ledger.within_budget() and ledger.total_epsilon() == pytest.approx(1.0, rel=1e-3)


def test_an_add_remove_run_stores_no_private_count(tmp_path):
  images, labels = _arrays(M, shape=(28, 28, 1))
  timages, tlabels = _arrays(40, shape=(28, 28, 1), seed=1)
  path = tmp_path / "d.npz"
  np.savez(path, x=images, y=labels, x_test=timages, y_test=tlabels)
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--data", str(path), "--out", str(out), "--steps", "2",
                   "--batch-size", "20", "--num-synthetic", "40", "--eval-train-size", "20",
                   "--classifiers", "sklearn-logistic_regression", "--adjacency", "add_remove",
                   "--config.ntk_layers=[32,\"relu\",\"layernorm\",4]", "--quiet"]) == 0
  ledger = read_ledger(out / "privacy.json")
  assert [r.name for r in ledger.releases] == ["private_count", "labelled_mean_embedding"]
  for name in ("privacy.json", "report.md", "config.json", "metrics.json", "log.txt"):
    assert not _mentions(M, (out / name).read_text()), name
  assert "released with noise" in (out / "report.md").read_text()


def test_the_audit_covers_add_remove_with_the_canary_added(tmp_path):
  images, labels = _arrays(200, num_classes=4)
  path = tmp_path / "d.npz"
  np.savez(path, x=images, y=labels, x_test=images[:8], y_test=labels[:8])
  config = RunConfig(**SMALL, data=DataConfig(source=str(path)), adjacency="add_remove",
                     public_num_examples=200)
  result = pipeline.audit(config, num_examples=200, trials=100, seed=0,
                          private_diagnostics=True)
  assert result["private_diagnostics"]["gap_within_sensitivity"]
  assert result["epsilon_lower_bound"] < config.epsilon
  blind = pipeline.audit(config, num_examples=200, trials=100, seed=0, noise=False)
  assert blind["epsilon_lower_bound"] > config.epsilon


# --- diagnostics --------------------------------------------------------------------


def test_private_diagnostics_reach_the_terminal_only_when_asked(test_set, capsys):
  config = RunConfig(**SMALL, noise_seed=0)
  private = make_dataset(*_arrays(M, num_classes=9), num_classes=10, name="private")
  recipe = pipeline.build_recipe(config, test_set.image_shape, 10)
  statistic = recipe.private_statistic(private, config, quiet=True)
  recipe.release(statistic, private, config, quiet=True)
  assert "signal-to-noise" not in capsys.readouterr().err
  recipe.release(statistic, private, config, quiet=True, show_private=True)
  lines = [l for l in capsys.readouterr().err.splitlines() if l]
  assert lines and all(l.startswith(diagnostics.MARK) for l in lines)
  assert any("[9]" in l for l in lines) and any("signal-to-noise" in l for l in lines)
