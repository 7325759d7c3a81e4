"""`vpntk export --format dpimagebench`: the layout and array conventions
DPImageBench's eval.py reads (<exp_path>/gen/gen.npz: x float NCHW in [0, 1],
y integer class indices (N,); no rescaling on load)."""

import json
import os

import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig


def _run_dir(tmp_path, shape=(28, 28, 1), n=30, source="fashion_mnist"):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(
      RunConfig(data=DataConfig(source=source), epsilon=10.0).to_json()))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *shape), np.uint8)
  images[0] = 0
  images[1] = 255
  labels = (np.arange(n) % 10).astype(np.int32)
  np.savez(run / "synthetic.npz", images=images, labels=labels)
  return run, images, labels


def _read_like_dpimagebench(exp_path):
  """What DPImageBench's eval.py and Evaluator assume of gen.npz."""
  syn = np.load(os.path.join(exp_path, "gen", "gen.npz"))
  x, y = syn["x"], syn["y"]
  assert x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[2] == x.shape[3]  # NCHW, square
  assert np.issubdtype(x.dtype, np.floating) and x.min() >= 0 and x.max() <= 1
  assert y.ndim == 1 and np.issubdtype(y.dtype, np.integer) and len(y) == len(x)
  return x, y


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_export_writes_what_dpimagebench_reads(tmp_path, capsys, shape):
  run, images, labels = _run_dir(tmp_path, shape)
  out = tmp_path / "bench"
  assert cli.main(["export", str(run), "--out", str(out)]) == 0
  summary = json.loads(capsys.readouterr().out)
  x, y = _read_like_dpimagebench(out)
  assert x.dtype == np.float32 and y.dtype == np.int64
  assert x.shape == (len(images), shape[2], shape[0], shape[1])
  # Exactly the stored pixels: back to uint8 NHWC bit for bit.
  back = np.rint(np.transpose(x, (0, 2, 3, 1)) * 255).astype(np.uint8)
  np.testing.assert_array_equal(back, images)
  np.testing.assert_array_equal(y, labels)
  assert x[0].max() == 0.0 and x[1].min() == 1.0
  assert summary["data_name"] == f"fmnist_{shape[0]}"
  assert f"--exp_path {out}" in summary["evaluate_with"] and "--epsilon 10.0" in summary[
      "evaluate_with"]


def test_export_defaults_into_the_run_and_never_replaces_silently(tmp_path, capsys):
  run, _, _ = _run_dir(tmp_path)
  assert cli.main(["export", str(run)]) == 0
  target = run / "dpimagebench" / "gen" / "gen.npz"
  before = target.read_bytes()
  assert cli.main(["export", str(run)]) == 2
  assert "--force" in capsys.readouterr().err and target.read_bytes() == before
  assert cli.main(["export", str(run), "--force"]) == 0


def test_export_of_a_run_without_synthetic_data_is_an_error(tmp_path, capsys):
  run, _, _ = _run_dir(tmp_path)
  (run / "synthetic.npz").unlink()
  assert cli.main(["export", str(run), "--out", str(tmp_path / "bench")]) == 2
  assert "synthetic.npz" in capsys.readouterr().err and not (tmp_path / "bench").exists()
