"""DP-MERF random Fourier features: kernel, norm bound, sums, and a tiny run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from public_fixtures import random_npz
from vpntk_jax.privacy.noise import LATTICE_FACTOR
from vpntk_jax import cli
from vpntk_jax.features import ntk
from vpntk_jax.features.rff import RFFFeatureMap, median_heuristic_bandwidth, rff_features


def test_features_approximate_the_gaussian_kernel():
  fmap = RFFFeatureMap(input_dim=10, num_features=40000, bandwidth=2.0)
  x = jax.random.uniform(jax.random.key(0), (6, 10))
  phi = rff_features(fmap.frequencies, x)
  d2 = np.sum((np.asarray(x)[:, None] - np.asarray(x)[None]) ** 2, -1)
  np.testing.assert_allclose(phi @ phi.T, np.exp(-d2 / (2 * 2.0 ** 2)), atol=0.03)


@pytest.mark.parametrize("value", [0.0, 1.0, 1e6, 1e-30])
def test_feature_norm_at_most_one(value):
  fmap = RFFFeatureMap(input_dim=784, num_features=1000)
  x = jnp.full((3, 784), value, jnp.float32)
  phi = np.asarray(rff_features(fmap.frequencies, x), np.float64)
  norms = np.linalg.norm(phi, axis=1)
  assert np.all(norms <= 1.0) and np.all(norms > 1 - 2 * ntk.NORM_SAFETY_MARGIN), norms


def test_private_sum_and_synthetic_mean_agree_with_direct_computation():
  fmap = RFFFeatureMap(input_dim=12, num_features=64, chunk_size=5)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (12, 3, 4, 1), np.uint8)
  labels = np.repeat([0, 1, 2], 4)
  phi = np.asarray(rff_features(fmap.frequencies, ntk.flatten_images(images)))
  direct = phi.T @ np.eye(3)[labels]
  total = fmap.private_sum(images, labels, 3)["rff"]
  np.testing.assert_allclose(total, direct, atol=1e-5)
  grouped = ntk.flatten_images(images).reshape(3, 4, 12)
  np.testing.assert_allclose(fmap.synthetic_mean(grouped)["rff"], direct / 12, atol=1e-6)


def test_frequencies_are_drawn_once_and_concretely_even_when_first_needed_in_a_trace():
  from vpntk_jax.features import rff
  rff._frequencies.cache_clear()
  fmap = RFFFeatureMap(input_dim=12, num_features=64, seed=3)
  jax.jit(fmap.synthetic_mean)(jnp.zeros((2, 3, 12)))  # first use inside jit, as on resume
  w = fmap.frequencies
  assert w is fmap.frequencies  # cached: a jitted step closes over one constant
  direct = jax.random.normal(jax.random.key(3), (12, 32)) / fmap.bandwidth
  np.testing.assert_array_equal(np.asarray(w), direct)  # a leaked tracer would raise here


def test_median_heuristic_is_positive_and_scale_aware():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 4, 4, 1), np.uint8)
  small = median_heuristic_bandwidth(images // 4)
  assert 0 < small < median_heuristic_bandwidth(images)


def test_dp_merf_end_to_end_tiny(tmp_path):
  data = random_npz(tmp_path / "d.npz", 200, 80, 4)
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--method", "dp-merf", "--data", str(data), "--out", str(out),
                   "--steps", "3", "--batch-size", "16", "--num-synthetic", "40",
                   "--eval-train-size", "40", "--classifiers", "sklearn-logistic_regression",
                   "--quiet"]) == 0
  privacy = json.loads((out / "privacy.json").read_text())
  # 2/m, plus the lattice rounding's share (at most 1/LATTICE_FACTOR of it).
  assert 2 / 200 < privacy["sensitivity"] <= 2 / 200 * (1 + 1 / LATTICE_FACTOR)
  assert privacy["releases"][0]["shape"] == [10000, 4]
  assert json.loads((out / "config.json").read_text())["method"] == "dp-merf"
