"""benchmarks/gpu_suite.sh runs here, at its dry-run size: every part's command line,
its JSON and the suite's summary (the GPU figures themselves need the GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"


def _suite(tmp_path, *args):
  env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OUT": str(tmp_path / "out"),
         "PYTHON": sys.executable}
  env.update({k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_", "OPENBLAS"))})
  return subprocess.run(["bash", str(SUITE), *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def test_gpu_suite_dry_run_writes_every_part(tmp_path):
  done = _suite(tmp_path, "--dry-run")
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  out = tmp_path / "out"
  summary = json.loads((out / "summary.json").read_text())
  assert summary["dry_run"] is True
  assert summary["command"] == "bash benchmarks/gpu_suite.sh --dry-run"
  parts = summary["parts"]
  assert set(parts) == {"setup", "ntk_embedding", "full_run", "ti_throughput", "dp_sgd_step",
                        "unet_step"}
  assert all(p["rc"] == 0 for p in parts.values()), parts
  step = json.loads((out / "ntk_embedding.json").read_text())["step"][0]
  assert step["xla_gflop"] > 0 and step["ratio_to_arithmetic_limit"] > 0
  assert parts["ntk_embedding"]["steps"][0]["batch"] == step["batch"]
  run = json.loads((out / "full_run.json").read_text())["runs"][0]
  assert "error" not in run, run
  assert run["generator_steps"] == 2 and set(run["stage_seconds"]) >= {"release", "evaluate"}
  assert parts["full_run"]["runs"][0]["run_seconds"] == run["run_seconds"]
  assert (out / "ti_throughput.json").is_file() and (out / "dp_sgd_step.json").is_file()
  unet = json.loads((out / "unet_step.json").read_text())
  assert [(r["size"], r["batch"]) for r in unet["steps"]] == [("tiny", 4)]
  assert len(unet["load_average_start"]) == 3 and unet["matmul_gflop_per_s"] > 0
  for kind in ("non_private", "dp_sgd"):
    assert set(unet["steps"][0][kind]) == {"1", "2"}
    for entry in unet["steps"][0][kind].values():
      assert entry["xla_gflop"] > 0 and entry["seconds"] > 0
      assert entry["x_from_arithmetic_limit"] == pytest.approx(
          entry["seconds"] * unet["matmul_gflop_per_s"] / entry["xla_gflop"])
  dp = unet["steps"][0]["dp_sgd"]["2"]
  assert dp["dp_over_non_private"] == pytest.approx(
      dp["seconds"] / unet["steps"][0]["non_private"]["2"]["seconds"])
  # Two noise draws per example: about twice the network's arithmetic of one.
  flops = [unet["steps"][0]["dp_sgd"][m]["xla_gflop"] for m in ("1", "2")]
  assert 1.5 < flops[1] / flops[0] < 2.5
  assert parts["unet_step"]["steps"][0]["dp_sgd_m2"]["seconds"] == dp["seconds"]


def test_gpu_suite_refuses_an_unknown_argument(tmp_path):
  done = _suite(tmp_path, "--fast")
  assert done.returncode == 2 and "--dry-run" in done.stderr
  assert not (tmp_path / "out" / "summary.json").exists()
