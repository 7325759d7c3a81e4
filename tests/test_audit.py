"""The empirical audit: below the claim with noise, detects the canary without."""

import math
import os

import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax import config as config_lib
from vpntk_jax import pipeline
from vpntk_jax.privacy import audit


def test_clopper_pearson_and_bound_formula():
  assert audit.clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
  assert audit.clopper_pearson_upper(100, 100, 0.95) == 1.0
  assert audit.epsilon_lower_bound(0.5, 0.5, 1e-5) == 0.0  # coin flipping: nothing learnt
  assert audit.epsilon_lower_bound(0.01, 0.01, 0.0) == pytest.approx(math.log(99))


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("audit") / "d.npz"
  np.savez(path, x=rng.integers(0, 256, (200, 8, 8, 1), np.uint8), y=np.arange(200) % 4)
  return config_lib.RunConfig(data=str(path), ntk_layers=(32, "relu", "layernorm", 4),
                              epsilon=1.0, delta=1e-5)


def test_audit_lower_bound_stays_below_claimed_epsilon(small_config):
  result = pipeline.audit(small_config, num_examples=200, trials=400, seed=0)
  assert result["gap_within_sensitivity"]
  assert result["epsilon_lower_bound"] < small_config.epsilon
  assert result["false_positives"] + result["false_negatives"] > 0


def test_audit_without_noise_detects_the_canary(small_config):
  result = pipeline.audit(small_config, num_examples=200, trials=400, noise=False, seed=0)
  assert result["false_positives"] == 0 and result["false_negatives"] == 0
  assert result["epsilon_lower_bound"] > small_config.epsilon


def test_audit_cli_prints_json(small_config, capsys):
  assert cli.main(["audit", "--data", small_config.data, "--examples", "100", "--trials", "40",
                   "--config", os.path.join(os.path.dirname(__file__), "tiny_config.py")]) in (0,)
  assert "epsilon_lower_bound" in capsys.readouterr().out
