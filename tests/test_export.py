"""`vpntk export --format dpimagebench`: the layout and array conventions
DPImageBench's eval.py reads (<exp_path>/gen/gen.npz: x float NCHW in [0, 1],
y integer class indices (N,); no rescaling on load)."""

import json
import os

import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax import export
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig


def _run_dir(tmp_path, shape=(28, 28, 1), n=30, source="fashion_mnist", labels=None,
             **config):
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(
      RunConfig(data=DataConfig(source=source), epsilon=10.0, **config).to_json()))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (n, *shape), np.uint8)
  images[0] = 0
  images[1] = 255
  labels = (np.arange(n) % 10).astype(np.int32) if labels is None else labels
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


@pytest.mark.parametrize("method, named", [("dp-merf", "DP-MERF"), ("dp-ntk", "DP-NTK"),
                                           ("vp-ntk", "vp-ntk")])
def test_the_eval_hint_names_the_run_s_own_method(tmp_path, capsys, method, named):
  run, _, _ = _run_dir(tmp_path, method=method)
  assert cli.main(["export", str(run), "--out", str(tmp_path / "bench")]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out)
  assert f"eval.py --method {named} --data_name fmnist_28" in summary["evaluate_with"]
  # A method DPImageBench does not have: say which config eval.py will look for.
  no_such_method = [w for w in summary["warnings"] if "has no method" in w]
  assert bool(no_such_method) == (method == "vp-ntk")
  assert all(f"vpntk: warning: {w}" in captured.err for w in summary["warnings"])


def test_a_missing_class_is_an_error_before_anything_is_written(tmp_path, capsys):
  labels = (np.arange(30) % 9).astype(np.int32)  # class 9 of FashionMNIST's 10 absent
  run, _, _ = _run_dir(tmp_path, labels=labels)
  out = tmp_path / "bench"
  assert cli.main(["export", str(run), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert "no image of class(es) [9] of 10" in err and "Traceback" not in err
  assert not out.exists()


def test_a_gap_in_the_classes_of_an_unknown_source_is_an_error(tmp_path, capsys):
  labels = np.array([0, 2] * 15, np.int32)
  run, _, _ = _run_dir(tmp_path, labels=labels, source=str(tmp_path / "own.npz"))
  assert cli.main(["export", str(run), "--out", str(tmp_path / "bench")]) == 2
  assert "class(es) [1] of 3" in capsys.readouterr().err


def test_split_and_delta_unlike_dpimagebench_s_are_warned(tmp_path, capsys):
  run, _, _ = _run_dir(tmp_path)  # delta 1e-5, the default
  assert cli.main(["export", str(run), "--out", str(tmp_path / "a")]) == 0
  warnings = json.loads(capsys.readouterr().out)["warnings"]
  assert any("55,000 of fmnist's 60,000" in w for w in warnings)
  assert any("delta is 1e-05" in w and "1.666e-06" in w for w in warnings)
  (tmp_path / "run").rename(tmp_path / "old")
  bench_delta = export.dpimagebench_delta(55000)
  run, _, _ = _run_dir(tmp_path, delta=bench_delta)
  assert cli.main(["export", str(run), "--out", str(tmp_path / "b")]) == 0
  warnings = json.loads(capsys.readouterr().out)["warnings"]
  assert len(warnings) == 1 and "random_split" in warnings[0]
  assert bench_delta == pytest.approx(1 / (55000 * np.log(55000)))


def test_a_dpimagebench_protocol_run_is_warned_of_nothing(tmp_path, capsys):
  # --protocol dpimagebench trains on DPImageBench's own 55,000 at its delta.
  run, _, _ = _run_dir(tmp_path, protocol="dpimagebench", method="dp-ntk")
  assert cli.main(["export", str(run), "--out", str(tmp_path / "a")]) == 0
  assert json.loads(capsys.readouterr().out)["warnings"] == []
