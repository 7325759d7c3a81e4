"""The empirical audit: below the claim with noise, detects the canary without."""

import dataclasses
import json
import math
import os

import numpy as np
import pytest

from public_fixtures import random_npz
from vpntk_jax import cli
from vpntk_jax import config as config_lib
from vpntk_jax import pipeline
from vpntk_jax.blocks import DataConfig, TrainConfig
from vpntk_jax.data import load_dataset, resize_dataset
from vpntk_jax.privacy import audit, read_ledger


def test_clopper_pearson_and_bound_formula():
  assert audit.clopper_pearson_upper(0, 100, 0.95) == pytest.approx(1 - 0.05 ** (1 / 100))
  assert audit.clopper_pearson_upper(100, 100, 0.95) == 1.0
  assert audit.epsilon_lower_bound(0.5, 0.5, 1e-5) == 0.0  # coin flipping: nothing learnt
  assert audit.epsilon_lower_bound(0.01, 0.01, 0.0) == pytest.approx(math.log(99))


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
  path = random_npz(tmp_path_factory.mktemp("audit") / "d.npz", 200, 8, 4)
  return config_lib.RunConfig(data=DataConfig(source=path), ntk_layers=(32, "relu", "layernorm", 4),
                              epsilon=1.0, delta=1e-5)


def test_audit_lower_bound_stays_below_claimed_epsilon(small_config):
  result = pipeline.audit(small_config, num_examples=200, trials=400, seed=0,
                          private_diagnostics=True)
  assert result["private_diagnostics"]["gap_within_sensitivity"]
  assert result["epsilon_lower_bound"] < small_config.epsilon
  assert result["false_positives"] + result["false_negatives"] > 0


def test_audit_without_noise_detects_the_canary(small_config):
  result = pipeline.audit(small_config, num_examples=200, trials=400, noise=False, seed=0)
  # The exact gap of the neighbours' statistics is private: shown only when asked.
  assert "statistic_gap" not in json.dumps(result)
  assert result["false_positives"] == 0 and result["false_negatives"] == 0
  assert result["epsilon_lower_bound"] > small_config.epsilon


def test_audit_cli_prints_json(small_config, capsys):
  assert cli.main(["audit", "--data", small_config.data.source, "--examples", "100", "--trials", "40",
                   "--config", os.path.join(os.path.dirname(__file__), "tiny_config.py")]) in (0,)
  assert "epsilon_lower_bound" in capsys.readouterr().out


def test_audit_uses_the_sigma_the_run_releases_with_a_validation_release(small_config, tmp_path):
  # With a validation release the budget is split: the main release gets a larger
  # sigma than a lone release at the same epsilon. The audit must audit that one.
  config = dataclasses.replace(small_config, validation_noise_scale=10.0, noise_seed=1,
                               train=TrainConfig(steps=1, batch_size=8), num_synthetic=8,
                               eval_train_size=8, classifiers=("sklearn-logistic_regression",))
  out = tmp_path / "run"
  pipeline.run_synthesis(config, str(out), quiet=True,
                         datasets=pipeline.load_private_and_test(config, (
                             load_dataset(config.data.source, "train"),
                             load_dataset(config.data.source, "train"))))
  released = {r.name: r.sigma for r in read_ledger(out / "privacy.json").releases}
  result = pipeline.audit(config, num_examples=200, trials=40, seed=0)
  assert result["sigma"] == pytest.approx(released["labelled_mean_embedding"], rel=1e-12)
  assert result["sigma"] > pipeline.audit(small_config, num_examples=200, trials=40,
                                          seed=0)["sigma"]


def test_audit_sees_the_images_at_the_run_s_image_size(small_config, tmp_path):
  resized, test = (resize_dataset(load_dataset(small_config.data.source, split), 4)
                   for split in ("train", "test"))
  path = tmp_path / "resized.npz"
  np.savez(path, x=resized.images, y=resized.labels, x_test=test.images, y_test=test.labels)
  at_size = dataclasses.replace(small_config, data=dataclasses.replace(small_config.data,
                                                                       image_size=4))
  pre_resized = dataclasses.replace(small_config, data=DataConfig(source=str(path)))
  a = pipeline.audit(at_size, num_examples=200, trials=40, seed=0)
  b = pipeline.audit(pre_resized, num_examples=200, trials=40, seed=0)
  assert a["image_shape"] == [4, 4, 1]
  assert a == b


def test_reachability_separates_the_worlds_for_float32_noise_and_not_for_the_lattice(
    small_config):
  old = pipeline.audit(small_config, num_examples=200, trials=100, seed=0, sampler="float32")
  reach = old["reachability"]
  assert reach["reachable_share_first_world"] == 1.0  # the emulated support is exact
  assert reach["false_positives"] == 0 and reach["false_negatives"] == 0
  assert reach["epsilon_lower_bound"] > small_config.epsilon
  new = pipeline.audit(small_config, num_examples=200, trials=100, seed=0)["reachability"]
  assert new["sampler"] == "lattice"
  assert new["reachable_share_first_world"] == new["reachable_share_second_world"] == 1.0
  assert new["epsilon_lower_bound"] == 0.0
