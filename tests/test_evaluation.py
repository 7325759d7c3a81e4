"""Tests for vpntk_jax.evaluation and vpntk_jax.visualize on sklearn's 8x8 digits."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.evaluation import DEFAULT_CLASSIFIERS, balanced_subsample, evaluate_synthetic
from vpntk_jax.evaluation.cnn import fit_predict_cnn, max_pool_2x2
from vpntk_jax.visualize import (BACKGROUND, PAD, labelled_sample_grid, render_loss_curve,
                                 sample_grid, save_loss_curve, save_png, save_sample_grid)

# Few epochs suffice on 8x8 digits; kept fixed so the test stays fast and honest.
CNN_EPOCHS = 15


def _evaluate(digits, train_labels):
  train_x, _, test_x, test_y = digits
  return evaluate_synthetic(
    train_x, train_labels, test_x, test_y, num_classes=10, train_size=1000, seed=0,
    cnn_epochs=CNN_EPOCHS, progress=False,
  )


@pytest.fixture(scope="module")
def real_result(digits):
  return _evaluate(digits, digits[1])


def test_balanced_subsample_counts_and_short_classes():
  labels = np.repeat([0, 1, 2], [50, 30, 5])
  idx = balanced_subsample(labels, 10, seed=3)
  assert np.bincount(labels[idx]).tolist() == [10, 10, 5]
  assert len(np.unique(idx)) == len(idx)
  assert np.all(np.diff(idx) > 0)


def test_balanced_subsample_is_deterministic_in_seed():
  labels = np.random.default_rng(0).integers(0, 4, size=400)
  a = balanced_subsample(labels, 20, seed=1)
  assert np.array_equal(a, balanced_subsample(labels, 20, seed=1))
  assert not np.array_equal(a, balanced_subsample(labels, 20, seed=2))


def test_max_pool_matches_reference():
  x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
  expected = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4))
  np.testing.assert_array_equal(np.asarray(max_pool_2x2(x)), expected)


def test_evaluate_synthetic_on_real_digits(real_result, digits):
  acc = real_result["accuracy"]
  assert set(acc) == set(DEFAULT_CLASSIFIERS)
  assert acc["logistic_regression"] > 0.85
  assert acc["mlp"] > 0.85
  assert acc["cnn"] > 0.7
  # 100 per class asked; short classes give all they have.
  expected_size = int(np.minimum(np.bincount(digits[1]), 100).sum())
  assert real_result["train_size"] == expected_size
  assert real_result["test_size"] == len(digits[3])
  assert all(real_result["seconds"][name] > 0 for name in DEFAULT_CLASSIFIERS)
  assert 0.0 <= real_result["synthetic_val_accuracy"]["cnn"] <= 1.0
  assert "test set" in real_result["protocol"]


def test_evaluate_synthetic_depends_on_labels(digits):
  permuted = np.random.default_rng(1).permutation(digits[1])
  result = _evaluate(digits, permuted)
  for name, accuracy in result["accuracy"].items():
    assert accuracy < 0.3, (name, accuracy)


def test_evaluate_synthetic_rejects_bad_inputs(digits):
  train_x, train_y, test_x, test_y = digits
  with pytest.raises(DataError):
    evaluate_synthetic(train_x, train_y + 1, test_x, test_y, num_classes=10, progress=False)
  with pytest.raises(DataError):
    evaluate_synthetic(
      train_x.astype(np.float32), train_y, test_x, test_y, num_classes=10, progress=False
    )
  with pytest.raises(ConfigError):
    evaluate_synthetic(
      train_x, train_y, test_x, test_y, num_classes=10, classifiers=("svm",), progress=False
    )


def test_cnn_is_deterministic_in_seed(digits):
  train_x, train_y, test_x, _ = digits
  run = lambda seed: fit_predict_cnn(
    train_x[:300], train_y[:300], test_x[:100], num_classes=10, seed=seed, epochs=2
  )
  (pred_a, info_a), (pred_b, info_b) = run(5), run(5)
  np.testing.assert_array_equal(pred_a, pred_b)
  assert info_a["train_losses"] == info_b["train_losses"]
  assert info_a["train_examples"] == 270


def test_sample_grid_rows_hold_their_class():
  rng = np.random.default_rng(0)
  labels = rng.permutation(np.repeat(np.arange(10), 12))
  labels = labels[~((labels == 9) & (np.cumsum(labels == 9) > 3))]  # class 9: only 3 images
  values = (labels * 20 + 7).astype(np.uint8)
  images = np.tile(values[:, None, None, None], (1, 28, 28, 1))
  grid = sample_grid(images, labels, num_classes=10, per_class=10)
  cell = 28 + PAD
  assert grid.shape == (10 * cell + PAD, 10 * cell + PAD, 1)
  assert grid.dtype == np.uint8
  for k in range(10):
    for j in range(10):
      block = grid[PAD + k * cell : PAD + k * cell + 28, PAD + j * cell : PAD + j * cell + 28]
      expected = k * 20 + 7 if (k < 9 or j < 3) else BACKGROUND
      assert np.all(block == expected), (k, j)
  assert np.all(grid[:PAD] == BACKGROUND)
  assert np.all(grid[:, PAD + 28 : PAD + cell] == BACKGROUND)


@pytest.mark.parametrize("size, channels", [(28, 1), (8, 3)])
def test_labelled_sample_grid_names_each_row(tmp_path, size, channels):
  labels = np.repeat(np.arange(3), 4)
  images = np.full((12, size, size, channels), 128, np.uint8)
  names = ("T-shirt/top", "Trouser", "Ankle boot")
  plain = sample_grid(images, labels, 3, per_class=4)
  grid = labelled_sample_grid(images, labels, names, per_class=4)
  scale = grid.shape[0] // plain.shape[0]
  assert grid.shape[0] == plain.shape[0] * scale and grid.shape[-1] == channels
  assert scale * (size + PAD) >= 14  # tall enough for a line of text
  # The images sit unchanged (enlarged by a whole factor) right of a names column ...
  margin = grid.shape[1] - plain.shape[1] * scale
  np.testing.assert_array_equal(
      grid[:, margin:], np.repeat(np.repeat(plain, scale, axis=0), scale, axis=1))
  # ... whose ink lies in every row's band, and only there.
  ink = (grid[:, :margin] < 100).any(axis=(1, 2))
  cell = (size + PAD) * scale
  assert all(ink[k * cell:(k + 1) * cell + PAD * scale].any() for k in range(3))
  assert not ink[3 * cell + PAD * scale:].any()
  other = labelled_sample_grid(images, labels, ("a", "b", "c"), per_class=4)
  assert other.shape[1] < grid.shape[1]  # the column fits the longest name
  # save_sample_grid labels the rows only where the names match the classes.
  save_sample_grid(tmp_path / "named.png", images, labels, 3, per_class=4, class_names=names)
  save_sample_grid(tmp_path / "plain.png", images, labels, 3, per_class=4, class_names=names[:2])
  with Image.open(tmp_path / "named.png") as a, Image.open(tmp_path / "plain.png") as b:
    assert a.size == (grid.shape[1], grid.shape[0]) and b.size == plain.shape[1::-1]


@pytest.mark.parametrize("points", [1, 2])
def test_a_short_loss_log_is_written_out_not_plotted(points):
  steps, losses = np.arange(points) * 10, np.array([0.5, 0.25][:points])
  rgb = render_loss_curve(steps, losses).astype(int)
  blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100) & (rgb[..., 1] < 100)
  assert not blue.any()  # no dot, no two-point "curve"
  dark = rgb.sum(axis=-1) < 100
  assert dark[:, 80].sum() < 50  # no log10 axis either
  assert dark[40:120].sum() > 100  # the values, as text
  longer = render_loss_curve(np.arange(3), np.array([0.5, 0.25, 0.2])).astype(int)
  assert ((longer[..., 2] > 150) & (longer[..., 0] < 100)).any()
  assert (longer.sum(axis=-1) < 100)[30:360, 80].mean() > 0.9  # the axis of a real curve


@pytest.mark.parametrize("channels", [1, 3])
def test_save_png_roundtrip_and_leaves_no_temp_files(tmp_path, channels):
  image = np.random.default_rng(0).integers(0, 256, size=(9, 13, channels), dtype=np.uint8)
  path = tmp_path / "sub" / "img.png"
  save_png(path, image)
  with Image.open(path) as pil:
    decoded = np.asarray(pil)
  np.testing.assert_array_equal(decoded.reshape(image.shape), image)
  assert os.listdir(path.parent) == ["img.png"]


def test_save_loss_curve_draws_a_curve(tmp_path):
  steps = np.arange(200)
  losses = 10.0 * np.exp(-steps / 50.0) + 0.01
  losses[5] = 0.0  # not loggable: skipped rather than crashing
  path = tmp_path / "loss.png"
  save_loss_curve(path, steps, losses)
  with Image.open(path) as pil:
    pil.load()
    rgb = np.asarray(pil.convert("RGB")).astype(int)
  assert rgb.shape == (400, 640, 3)
  blue = (rgb[..., 2] > 150) & (rgb[..., 0] < 100) & (rgb[..., 1] < 100)
  assert blue.sum() > 200
  # The curve falls: its left end sits higher (smaller row) than its right end.
  rows, cols = np.nonzero(blue)
  assert rows[cols < cols.min() + 5].mean() < rows[cols > cols.max() - 5].mean()
  dark = rgb.sum(axis=-1) < 100
  assert dark.sum() > 100  # axes and labels


def test_save_loss_curve_without_usable_points(tmp_path):
  path = tmp_path / "empty.png"
  save_loss_curve(path, [0, 1], [0.0, -1.0])
  with Image.open(path) as pil:
    assert pil.size == (640, 400)


def test_protocol_description_follows_the_classifier_settings(monkeypatch):
  from vpntk_jax.evaluation import classifiers, jax_classifiers, protocol
  every = protocol.CLASSIFIERS
  assert "max_iter=5000" in protocol.protocol_description(6000, 10000, 10, every)
  assert "max_iter=5000" not in protocol.protocol_description(6000, 10000, 10)
  monkeypatch.setitem(classifiers.MLP_KWARGS, "max_iter", 123)
  assert "max_iter=123" in protocol.protocol_description(6000, 10000, 10, every)
  monkeypatch.setattr(jax_classifiers, "MLP_EPOCHS", 77)
  assert "fixed 77 epochs" in protocol.protocol_description(6000, 10000, 10)
