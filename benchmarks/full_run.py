"""A whole run, stage by stage: what a user waits for (the reference DP-NTK code
reports 8.3 hours for its FashionMNIST run).

    python -m benchmarks.full_run --json benchmarks/results/full_run_cpu_2core.json
    python -m benchmarks.full_run --methods dp-ntk dp-merf --quick
    python -m benchmarks.full_run --methods vp-ntk --set options.public_model=public/mnist28

Each method runs `vpntk_jax.pipeline.run_synthesis` at its default settings on
the real FashionMNIST (`--quick`: 200 steps, 10,000 synthetic images, the
logistic-regression classifier only) in its own process, so the peak resident
memory (`ru_maxrss`) is that run's. Per stage (`stage_seconds` of the run's
summary): release (the private statistic, its noise, storing it),
post_process (generator or prompt training, for the one-release methods),
train_on_private (DP-SGD, for the many-step methods), synthesize, evaluate;
plus loading the data, and steps/s of the training stage. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

from benchmarks.output import emit


def one_run(method: str, quick: bool, overrides: dict) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  config = config_lib.RunConfig(method=method)
  if quick:
    config = config_lib.with_overrides(config, {
        "train.steps": 200, "num_synthetic": 10000, "classifiers": ("logistic_regression",)})
  config = config_lib.with_overrides(config, overrides)  # --set wins over --quick
  start = time.perf_counter()
  pipeline.load_private_and_test(config)
  load_seconds = time.perf_counter() - start
  with tempfile.TemporaryDirectory() as root:
    summary = pipeline.run_synthesis(config, os.path.join(root, "run"), quiet=True)
  stages = summary["stage_seconds"]
  training = "train_on_private" if stages.get("train_on_private", 0) > stages.get(
      "post_process", 0) else "post_process"
  steps = config.train.steps
  return {
      "method": method, "quick": quick, "overrides": overrides,
      "load_data_seconds": round(load_seconds, 3),
      "stage_seconds": stages, "run_seconds": summary["seconds"],
      "training_stage": training,
      "generator_steps": steps if training == "post_process" else None,
      "generator_steps_per_s": (round(steps / stages[training], 3)
                                if training == "post_process" and stages[training] else None),
      "accuracy": summary["accuracy"],
      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "jax": jax.__version__,
  }


def _overrides(pairs: list[str]) -> dict:
  out = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep:
      raise SystemExit(f"--set takes FIELD=VALUE, got {pair!r}")
    out[key] = value
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", nargs="+", default=["dp-ntk"])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                      help="config overrides for every method (e.g. options.public_model=DIR)")
  parser.add_argument("--json")
  parser.add_argument("--single", help=argparse.SUPPRESS)  # the per-method child process
  args = parser.parse_args()
  overrides = _overrides(args.set)
  if args.single:
    print(json.dumps(one_run(args.single, args.quick, overrides)))
    return
  runs = []
  for method in args.methods:
    cmd = [sys.executable, "-m", "benchmarks.full_run", "--single", method,
           *(["--quick"] if args.quick else []), *(["--set", *args.set] if args.set else [])]
    child = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if child.returncode != 0:
      runs.append({"method": method, "error": child.stderr[-2000:]})
      continue
    runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
  result = {"benchmark": "full_run", "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "runs": runs}
  emit(result, args.json)


if __name__ == "__main__":
  main()
