"""A multi-host job simulated by two CPU processes with two devices each (gloo collectives)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import host_devices_env

from vpntk_jax import cli, distributed
from vpntk_jax.errors import ConfigError


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _tiny_data(path):
  rng = np.random.default_rng(0)
  # 3 classes of 70: more rows than one device's share of a chunk, so every
  # device of both processes sums real examples.
  np.savez(path, x=rng.integers(0, 256, (210, 8, 8, 1), np.uint8), y=np.arange(210) % 3,
           x_test=rng.integers(0, 256, (60, 8, 8, 1), np.uint8), y_test=np.arange(60) % 3)


def _synthesize_args(data, out):
  return ["synthesize", "--data", str(data), "--out", str(out), "--steps", "4",
          "--batch-size", "12", "--checkpoint-every", "2", "--noise-seed", "0",
          "--num-synthetic", "30", "--eval-train-size", "30",
          "--classifiers", "sklearn-logistic_regression", "--quiet",
          '--config.ntk_layers=[32,"relu","layernorm",3]', "--config.train.log_every=1"]


def _run_two_processes(args):
  """Both processes' (returncode, stdout, stderr), started together."""
  port = _free_port()
  env = host_devices_env(2)
  procs = [subprocess.Popen([sys.executable, "-m", "vpntk_jax.cli", *args,
                             "--coordinator-address", f"localhost:{port}",
                             "--num-processes", "2", "--process-id", str(i)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  results = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    results.append((p.returncode, out, err))
  return results


def _summary(stdout: str) -> dict:
  return json.loads(stdout[stdout.index("{"):])  # gloo logs its connections to stdout first


def test_two_process_run_matches_one_process(tmp_path):
  data = tmp_path / "d.npz"
  _tiny_data(data)
  single, multi = tmp_path / "single", tmp_path / "multi"
  assert cli.main(_synthesize_args(data, single)) == 0

  (rc0, out0, err0), (rc1, out1, err1) = _run_two_processes(_synthesize_args(data, multi))
  assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
  assert _summary(out1) == {"run_dir": str(multi), "process_index": 1}
  single_summary = json.loads((single / "metrics.json").read_text())
  assert _summary(out0)["accuracy"].keys() == single_summary["accuracy"].keys()

  # The private sums split over 4 devices of 2 processes; the noise is the
  # primary's, so the two releases differ only by float rounding.
  with np.load(single / "release.npz") as a, np.load(multi / "release.npz") as b:
    np.testing.assert_allclose(b["embedding"], a["embedding"], rtol=0, atol=1e-6)
  p_single = json.loads((single / "privacy.json").read_text())
  p_multi = json.loads((multi / "privacy.json").read_text())
  assert len(p_multi["releases"]) == 1
  assert p_multi["sigma"] == p_single["sigma"] and p_multi["epsilon"] == 1.0
  # Only the primary wrote the log: one row per step, no duplicates.
  rows = (multi / "train_log.csv").read_text().splitlines()[1:]
  assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4]
  assert sorted(os.listdir(multi / "checkpoints")) == ["2", "4"]
  for name in ("synthetic.npz", "metrics.json", "samples.png", "report.html"):
    assert (multi / name).exists(), name

  # Resuming in two processes reuses the stored release, byte for byte.
  before = (multi / "release.npz").read_bytes()
  args = _synthesize_args(data, multi) + ["--resume", "--steps", "6"]
  (rc0, _, err0), (rc1, _, err1) = _run_two_processes(args)
  assert rc0 == 0 and rc1 == 0, err0[-3000:] + err1[-3000:]
  assert (multi / "release.npz").read_bytes() == before
  rows = (multi / "train_log.csv").read_text().splitlines()[1:]
  assert [int(r.split(",")[0]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_primary_refusal_stops_every_process_and_changes_nothing(tmp_path):
  data = tmp_path / "d.npz"
  _tiny_data(data)
  out = tmp_path / "run"
  out.mkdir()
  (out / "keep.txt").write_text("precious")
  (rc0, _, err0), (rc1, _, err1) = _run_two_processes(_synthesize_args(data, out))
  assert rc0 == 2 and "exists and is not empty" in err0
  assert rc1 == 2 and "primary process failed to open the run directory" in err1
  assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


def test_partial_manual_settings_are_refused():
  with pytest.raises(ConfigError, match="together"):
    distributed.initialize("localhost:1234", None, 0)
