"""benchmarks/gpu_suite.sh runs here, at its dry-run size: every part's command line,
its JSON and the suite's summary (the GPU figures themselves need the GPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
  assert set(parts) == {"setup", "ntk_embedding", "full_run", "ti_throughput", "dp_sgd_step"}
  assert all(p["rc"] == 0 for p in parts.values()), parts
  step = json.loads((out / "ntk_embedding.json").read_text())["step"][0]
  assert step["xla_gflop"] > 0 and step["ratio_to_arithmetic_limit"] > 0
  assert parts["ntk_embedding"]["steps"][0]["batch"] == step["batch"]
  run = json.loads((out / "full_run.json").read_text())["runs"][0]
  assert "error" not in run, run
  assert run["generator_steps"] == 2 and set(run["stage_seconds"]) >= {"release", "evaluate"}
  assert parts["full_run"]["runs"][0]["run_seconds"] == run["run_seconds"]
  assert (out / "ti_throughput.json").is_file() and (out / "dp_sgd_step.json").is_file()


def test_gpu_suite_refuses_an_unknown_argument(tmp_path):
  done = _suite(tmp_path, "--fast")
  assert done.returncode == 2 and "--dry-run" in done.stderr
  assert not (tmp_path / "out" / "summary.json").exists()
