"""dp-merf-laplace, the worked method of docs/adding_a_method.md: it is registered
(its flags in --help), its features are the Laplace kernel's and not DP-MERF's,
and a tiny run's privacy.json re-derives with dp-accounting alone."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from public_fixtures import random_npz
from rederive import rederive_epsilon
from vpntk_jax import cli
from vpntk_jax.features import ntk
from vpntk_jax.features.laplace_rff import LaplaceRFFFeatureMap
from vpntk_jax.features.rff import RFFFeatureMap, rff_features
from vpntk_jax.privacy.noise import LATTICE_FACTOR


def test_the_method_and_its_flags_are_in_the_help(capsys, monkeypatch):
  monkeypatch.setenv("COLUMNS", "200")  # one line: names with hyphens are not wrapped
  with pytest.raises(SystemExit) as done:
    cli.main(["synthesize", "--help"])
  assert done.value.code == 0
  listed = capsys.readouterr().out.split("(NAME: ")[1].split(")")[0].split(", ")
  assert "dp-merf-laplace" in listed and "dp-merf" in listed
  with pytest.raises(SystemExit):
    cli.main(["synthesize", "--method", "dp-merf-laplace", "--help"])
  own = capsys.readouterr().out.split("dp-merf-laplace settings")[1]
  assert "--rff-bandwidth X" in own and "in L1 distance (default 200)" in own


def test_features_approximate_the_laplace_kernel_not_the_gaussian():
  laplace = LaplaceRFFFeatureMap(input_dim=10, num_features=40000, bandwidth=2.0)
  gaussian = RFFFeatureMap(input_dim=10, num_features=40000, bandwidth=2.0)
  x = jax.random.uniform(jax.random.key(0), (6, 10))
  phi = np.asarray(rff_features(laplace.frequencies, x))
  diff = np.asarray(x)[:, None] - np.asarray(x)[None]
  np.testing.assert_allclose(phi @ phi.T, np.exp(-np.abs(diff).sum(-1) / 2.0), atol=0.03)
  # The same seed and shape give other frequencies, so other features and kernel.
  assert not np.allclose(laplace.frequencies, gaussian.frequencies)
  gram = np.asarray(rff_features(gaussian.frequencies, x) @ rff_features(gaussian.frequencies, x).T)
  assert np.abs(phi @ phi.T - gram).max() > 0.2
  assert laplace.describe()["kind"] == "rff-laplace" and laplace != gaussian


@pytest.mark.parametrize("value", [0.0, 1.0, 1e6])
def test_feature_norm_at_most_one_for_any_input(value):
  # Cauchy frequencies are heavy-tailed: Wx is huge for some, the norm must hold anyway.
  fmap = LaplaceRFFFeatureMap(input_dim=784, num_features=1000, bandwidth=1e-3)
  phi = np.asarray(rff_features(fmap.frequencies, jnp.full((3, 784), value)), np.float64)
  norms = np.linalg.norm(phi, axis=1)
  assert np.all(norms <= 1.0) and np.all(norms > 1 - 2 * ntk.NORM_SAFETY_MARGIN), norms


def test_tiny_run_goes_through_the_shared_privacy_path(tmp_path):
  data = random_npz(tmp_path / "d.npz", 200, 80, 4)
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--method", "dp-merf-laplace", "--rff-features", "200",
                   "--rff-bandwidth", "30", "--data", data, "--out", str(out),
                   "--train-steps", "3", "--batch-size", "16", "--num-synthetic", "40",
                   "--eval-train-size", "40", "--classifiers", "sklearn-logistic_regression",
                   "--noise-seed", "5", "--epsilon", "2", "--quiet"]) == 0
  config = json.loads((out / "config.json").read_text())
  assert config["method"] == "dp-merf-laplace" and config["options"]["bandwidth"] == 30.0
  privacy = json.loads((out / "privacy.json").read_text())
  # One release of 200 features x 4 classes; sensitivity 2/m as for any unit-norm map,
  # plus the lattice rounding's share.
  assert privacy["releases"][0]["shape"] == [200, 4]
  assert 2 / 200 < privacy["sensitivity"] <= 2 / 200 * (1 + 1 / LATTICE_FACTOR)
  # The file alone states the guarantee: dp-accounting re-derives it.
  assert privacy["within_budget"] and privacy["total_epsilon"] <= 2.0
  assert rederive_epsilon(privacy) == pytest.approx(privacy["total_epsilon"], rel=1e-3)
