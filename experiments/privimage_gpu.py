"""PrivImage and DPDM on FashionMNIST at GPU scale from the shipped public model, epsilon
1 and 10, within a time budget.

    python -m experiments.privimage_gpu --json gpu_out/privimage_gpu.json     # the GPU scale
    python -m experiments.privimage_gpu --smoke --json gpu_out/privimage_gpu.json  # CPU check
    python -m experiments.privimage_gpu --dp-steps auto --step-json gpu_out/dp_sgd_step.json

benchmarks/gpu_suite.sh runs it (docs/gpu.md); it lives here, beside the configs it
scales, since benchmarks/ imports nothing of experiments/. The runs are
experiments/diffusion_table.py's variants (`config_for`: public-only, PrivImage with
conditioning-only and full DP-SGD, DPDM from the shipped model `shipped:fashion_pool`)
with the fields of a `Scale` replaced, so everything not named here (the query,
clip norm, learning rate, accounting, data, classifiers) is the CPU table's. GPU:
the shipped model's "fast" UNet, DP-SGD of expected batch 2048 of the 55,000
private images with 4 noise draws (microbatches of 64 rows), 10,000 synthetic
images. Smoke: the same UNet, a few steps, 2 runs, 1,000 images.

Every run is a child process of this one (`--child NAME`), so that it can be
timed, capped and killed; the parent never touches JAX (the children own the
device), runs `parallel` children at a time (their CPU phases, compilation,
evaluation, overlap the other's device phases), watches each run's
dp_sgd_log.csv and prints the run's time estimate after its first DP-SGD steps,
and stops every child at the runs' total budget. `--dp-steps auto` sizes the
DP-SGD steps (the same for every run) to that budget from the measured seconds
of one DP step at the expected batch (benchmarks.dp_sgd_step's JSON); the number
chosen and why is in the result. Runs go to runs/privimage_gpu/NAME
(runs/privimage_gpu_smoke/NAME, emptied first, with --smoke); the result
(accuracy, total_epsilon, seconds, device per run) to --json.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from experiments import diffusion_table, privimage_fashion
from vpntk_jax.run_files import DP_SGD_LOG, METRICS, QUERY_SELECTION, TRAIN_LOG

COMMAND = "bash benchmarks/gpu_suite.sh"


@dataclasses.dataclass(frozen=True)
class Scale:
  """What a scale changes in privimage_fashion's configs, and how its runs are budgeted."""
  name: str
  model: dict          # DiffusionModelConfig fields
  pretrain: dict       # PublicPretrainConfig fields
  dp_sgd: dict         # DpSgdConfig fields
  run: dict            # RunConfig fields
  runs: tuple          # "<variant>_eps<epsilon>", most wanted first
  runs_root: str
  budget_s: float      # all runs together (and the preparation before them)
  parallel: int
  # --dp-steps auto: seconds of a run outside its DP-SGD steps (start, query,
  # pretraining, compilation, sampling, evaluation), and once more for the first
  # compilations, which the persistent cache then serves to the later runs.
  overhead_s: float
  first_compile_s: float
  dp_steps_range: tuple  # (fewest, most) that auto may choose
  # benchmarks.dp_sgd_step at this scale (gpu_suite.sh part a): its main batch and the
  # padded batches whose seconds and peak memory it reports.
  bench_batch: int
  bench_batches: tuple

  def bench_args(self) -> list:
    """benchmarks.dp_sgd_step's arguments for this scale's DP step."""
    return ["--model", "unet", "--unet-size", self.model["size"],
            "--multiplicity", str(self.dp_sgd["multiplicity"]),
            "--microbatch", str(self.dp_sgd["microbatch"]), "--quick",
            "--batch", str(self.bench_batch),
            "--batches", ",".join(map(str, self.bench_batches))]


GPU = Scale(
    name="gpu",
    model=dict(size="fast", sample_batch=2500),
    pretrain=dict(steps=0),
    # Plain Poisson batches (no max_batch): cutting draws above 2112 would leave fewer
    # padded shapes to compile, but its accounting raised the noise multiplier by a
    # third to a half (measured: 0.56 -> 0.88 at epsilon 10, 50 steps).
    dp_sgd=dict(steps=200, batch_size=2048, multiplicity=4, microbatch=64,
                checkpoint_every=25),
    run=dict(num_synthetic=10000),
    runs=("privimage-full_eps10", "privimage-conditioning_eps10", "public-only_eps10",
          "dpdm-conditioning_eps10", "privimage-full_eps1", "privimage-conditioning_eps1"),
    runs_root="runs/privimage_gpu", budget_s=330.0, parallel=2,
    overhead_s=75.0, first_compile_s=75.0, dp_steps_range=(50, 300),
    bench_batch=256, bench_batches=(256, 1024, 2048))

SMOKE = Scale(
    name="smoke",
    model=dict(size="fast", sample_batch=500, sample_steps=4),
    pretrain=dict(steps=0),
    dp_sgd=dict(steps=4, batch_size=64, multiplicity=2, microbatch=32, checkpoint_every=2),
    run=dict(num_synthetic=1000, eval_train_size=1000, cnn_epochs=1),
    runs=("privimage-full_eps10", "dpdm-conditioning_eps10"),
    runs_root="runs/privimage_gpu_smoke", budget_s=600.0, parallel=2,
    overhead_s=150.0, first_compile_s=60.0, dp_steps_range=(2, 4),
    bench_batch=64, bench_batches=(64, 128))


def split_name(name: str) -> tuple[str, float]:
  """("privimage-full", 10.0) from "privimage-full_eps10"."""
  variant, sep, eps = name.rpartition("_eps")
  if not sep:
    raise ValueError(f"run names look like privimage-full_eps10, got {name!r}")
  return variant, float(eps)


def configs(scale: Scale, dp_steps: int | None = None) -> dict:
  """name -> RunConfig: diffusion_table's variants at this scale (and DP-SGD steps)."""
  dp_fields = {**scale.dp_sgd, **({"steps": dp_steps} if dp_steps is not None else {})}
  out = {}
  for name in scale.runs:
    variant, epsilon = split_name(name)
    config = diffusion_table.config_for(variant, epsilon, seed=0)
    o = config.options
    fields = {**dp_fields, "steps": 0} if variant == "public-only" else dp_fields
    options = dataclasses.replace(
        o, model=dataclasses.replace(o.model, **scale.model),
        pretrain=dataclasses.replace(o.pretrain, **scale.pretrain),
        dp_sgd=dataclasses.replace(o.dp_sgd, **fields))
    out[name] = dataclasses.replace(config, epsilon=epsilon, options=options,
                                    **scale.run).validate()
  return out


# --- DP-SGD steps from the measured step time ------------------------------------------

def step_seconds(path: str | None, scale: Scale) -> tuple[float | None, str]:
  """Seconds of one DP step at the scale's expected batch, from benchmarks.dp_sgd_step's
  JSON (its model must be the scale's), and where the figure comes from."""
  if not path or not os.path.exists(path):
    return None, f"no step timing ({path or 'none given'})"
  try:
    with open(path) as f:
      bench = json.load(f)
  except (OSError, ValueError) as e:
    return None, f"unreadable step timing {path}: {e}"
  want = {"model": "unet", "unet_size": scale.model["size"],
          "multiplicity": scale.dp_sgd["multiplicity"], "microbatch": scale.dp_sgd["microbatch"]}
  differs = {k: bench.get(k) for k, v in want.items() if bench.get(k) != v}
  if differs:
    return None, f"{path} timed another model ({differs}, want {want})"
  expected = scale.dp_sgd["batch_size"]
  timed = [(r["batch"], r["seconds"]) for r in bench.get("batches", []) if r.get("seconds")]
  timed.append((bench["batch"], bench["seconds"]["dp_sgd_step"]))
  # The nearest timed batch at or above the expected one, else the largest, scaled
  # linearly in rows (the per-example work is).
  above = sorted(t for t in timed if t[0] >= expected)
  batch, seconds = above[0] if above else max(timed)
  return seconds * expected / batch, f"{path}: {seconds:.3g} s per DP step at batch {batch}"


def auto_dp_steps(scale: Scale, seconds_per_step: float, budget: float) -> tuple[int, str]:
  """The most DP-SGD steps (a multiple of the chunk, within the scale's range) with
  which every run fits `budget`, assuming the device runs the steps of concurrent
  runs one after another and overlaps the rest."""
  runs = len(scale.runs)
  waves = math.ceil(runs / scale.parallel)
  dp_time = budget - waves * scale.overhead_s - scale.first_compile_s
  chunk = scale.dp_sgd["checkpoint_every"]
  fewest, most = scale.dp_steps_range
  fit = int(max(dp_time, 0) / (runs * seconds_per_step)) // chunk * chunk
  steps = min(max(fit, fewest), most)
  return steps, (f"{steps} steps: {budget:.0f} s for {runs} runs, {waves} waves of "
                 f"{scale.parallel}, {scale.overhead_s:.0f} s each outside DP-SGD and "
                 f"{scale.first_compile_s:.0f} s of first compilations leave "
                 f"{dp_time:.0f} s of DP steps at {seconds_per_step:.3g} s"
                 + (f" (fit {fit}, clamped to {fewest}..{most})" if steps != fit else ""))


# --- the children ---------------------------------------------------------------------

def _read_csv_rows(path: str) -> list[list[float]]:
  try:
    with open(path) as f:
      lines = f.read().splitlines()[1:]
  except OSError:
    return []
  rows = []
  for line in lines:
    try:
      rows.append([float(x) for x in line.split(",")])
    except ValueError:
      pass  # a line being written
  return rows


def _run_file(out: str, name: str) -> str:
  """A file of run `out`, in place or in its staging directory while it is built."""
  for root in (out, out.rstrip("/") + ".partial"):
    path = os.path.join(root, name)
    if os.path.exists(path):
      return path
  return os.path.join(out, name)


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def child_run(name: str, scale: Scale, dp_steps: int | None, result_path: str) -> None:
  """One run, in this process; its result to `result_path`."""
  import jax  # pylint: disable=import-outside-toplevel
  from experiments.runs import run_or_resume  # pylint: disable=import-outside-toplevel
  from vpntk_jax import io_utils  # pylint: disable=import-outside-toplevel
  config = configs(scale, dp_steps)[name]
  out = os.path.join(scale.runs_root, name)
  t0 = time.perf_counter()
  summary = run_or_resume(config, out)
  dp, pre, model = config.options.dp_sgd, config.options.pretrain, config.options.model
  metrics = _read_json(os.path.join(out, METRICS)) or {}
  io_utils.write_json_atomic(result_path, {
      **summary, "wall_seconds": round(time.perf_counter() - t0, 1),
      "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
      "classifier_seconds": metrics.get("seconds"),
      "settings": {"method": config.method, "epsilon": config.epsilon, "delta": config.delta,
                   "unet_size": model.size, "pretrain_steps": pre.steps,
                   "pretrain_batch": pre.batch_size, "dp_steps": dp.steps,
                   "dp_batch": dp.batch_size, "multiplicity": dp.multiplicity,
                   "microbatch": dp.microbatch, "num_synthetic": config.num_synthetic,
                   "classifiers": list(config.classifiers)},
      "dp_sgd_log": _read_csv_rows(os.path.join(out, DP_SGD_LOG)),
      "pretrain_log": _read_csv_rows(os.path.join(out, TRAIN_LOG)),
      "query_selection": _read_json(os.path.join(out, QUERY_SELECTION)),
  })


def _check_pool_matches_split() -> None:
  """The pool's FashionMNIST classes must be the split's public part (both carried or
  rebuilt separately: a mismatch would mean another split)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vpntk_jax.errors import DataError  # pylint: disable=import-outside-toplevel
  with np.load(privimage_fashion.POOL) as pool, np.load(privimage_fashion.PUBLIC_FASHION) as pub:
    for suffix in ("", "_test"):
      n = len(pub["labels" + suffix])
      if not (np.array_equal(pool["images" + suffix][:n], pub["images" + suffix])
              and np.array_equal(pool["labels" + suffix][:n], pub["labels" + suffix])):
        raise DataError(f"{privimage_fashion.POOL} was not built from "
                        f"{privimage_fashion.PUBLIC_FASHION} (images{suffix} differ): rebuild "
                        f"the pool (python -m experiments.public_pool) after removing it")


def child_prepare(carried: str) -> dict:
  """The split, the pool and the public classifier: a carried classifier if it loads,
  else privimage_fashion.prepare() trains one."""
  from vpntk_jax import public  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  t0 = time.perf_counter()
  classifier = privimage_fashion.CLASSIFIER
  source = "kept"
  carried_dir = os.path.join(carried, classifier)
  if not os.path.exists(os.path.join(classifier, "public.json")) and os.path.isdir(carried_dir):
    shutil.copytree(carried_dir, classifier)
    source = "carried"
  from experiments import public_pool  # pylint: disable=import-outside-toplevel
  public_pool.write_pool()  # kept if present; the split too
  _check_pool_matches_split()
  if os.path.exists(os.path.join(classifier, "public.json")):
    try:
      with np.load(privimage_fashion.POOL) as z:
        images = z["images"][:8]
      public.classifier_logits(public.load_public(classifier), images)
    except Exception as e:  # pylint: disable=broad-except
      # A classifier saved by another library version that does not load here: train anew.
      aside = f"{classifier}.unloadable-{int(time.time())}"
      print(f"the classifier in {classifier} does not load ({type(e).__name__}: {e}); "
            f"moved to {aside}, training a new one", flush=True)
      os.rename(classifier, aside)
      source = "trained"
  else:
    source = "trained"
  privimage_fashion.prepare()  # trains the classifier when it is missing
  return {"classifier": source, "seconds": round(time.perf_counter() - t0, 1)}


# --- the parent -----------------------------------------------------------------------

class Child:
  """A child process whose output is printed with a prefix and kept in part."""
  live: list = []  # every child not yet finished, stopped if the parent is

  def __init__(self, name: str, argv: list, env: dict, deadline: float):
    self.name, self.deadline, self.start = name, deadline, time.monotonic()
    self.tail = collections.deque(maxlen=25)
    # Its own process group (not session: the device tool still ends what is left),
    # so that stopping it stops whatever it started too.
    self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1,
                                 process_group=0)
    Child.live.append(self)
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()
    self.stopped: str | None = None

  def _read(self) -> None:
    for line in self.proc.stdout:
      line = line.rstrip("\n")
      self.tail.append(line)
      print(f"[{self.name}] {line}", flush=True)

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def stop(self, why: str) -> None:
    if self.proc.poll() is not None:
      return
    self.stopped = why
    print(f"[{self.name}] stopping: {why}", flush=True)
    try:
      os.killpg(self.proc.pid, signal.SIGTERM)
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        os.killpg(self.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass

  def finish(self) -> int:
    rc = self.proc.wait()
    self.reader.join(5)
    if self in Child.live:
      Child.live.remove(self)
    return rc


def _child_argv(args, *extra) -> list:
  return [sys.executable, "-m", "experiments.privimage_gpu",
          *(["--smoke"] if args.smoke else []), *extra]


class Watch:
  """A running run's progress from its logs, and the time estimate after its first
  DP-SGD steps."""

  def __init__(self, child: Child, out: str, dp_steps: int, pretrain_steps: int):
    self.child, self.out = child, out
    self.dp_steps, self.pretrain_steps = dp_steps, pretrain_steps
    self.dp_rows_seen = self.pretrain_rows_seen = 0
    self.dp_done_at: float | None = None  # child time when the last DP line appeared

  def poll(self, t0: float, deadline: float, post_s: float) -> None:
    child = self.child
    pre = _read_csv_rows(_run_file(self.out, TRAIN_LOG))
    if len(pre) > self.pretrain_rows_seen:
      self.pretrain_rows_seen = len(pre)
      step, _, seconds = pre[-1][:3]
      print(f"[{child.name}] public pretraining {int(step)}/{self.pretrain_steps} steps in "
            f"{seconds:.0f} s (run at {child.elapsed():.0f} s)", flush=True)
    rows = _read_csv_rows(_run_file(self.out, DP_SGD_LOG))
    if len(rows) <= self.dp_rows_seen:
      return
    self.dp_rows_seen = len(rows)
    step, seconds = rows[-1][:2]
    if step >= self.dp_steps:
      self.dp_done_at = child.elapsed()
    # After the first chunk, the rate leaves its compilation out.
    rate = ((seconds - rows[0][1]) / (step - rows[0][0]) if len(rows) > 1
            else seconds / max(step, 1))
    now = time.monotonic()
    end = now + (self.dp_steps - step) * rate + post_s
    print(f"[{child.name}] DP-SGD {int(step)}/{self.dp_steps} steps in {seconds:.0f} s, "
          f"{rate:.3g} s/step: run estimate {end - child.start:.0f} s, ending at "
          f"{end - t0:.0f} s of the {deadline - t0:.0f} s budget", flush=True)
    if len(rows) > 1 and end > deadline + 30:
      child.stop(f"estimated to end {end - deadline:.0f} s after the budget")


def parent(args, scale: Scale, result: dict) -> None:
  """Prepares, then runs the scale's runs within the budget; fills `result` as it goes."""
  t0 = time.monotonic()
  budget = args.budget if args.budget is not None else scale.budget_s
  deadline = t0 + budget
  if args.smoke and os.path.isdir(scale.runs_root):
    shutil.rmtree(scale.runs_root)  # smoke runs start fresh; the GPU scale resumes
  os.makedirs(scale.runs_root, exist_ok=True)
  env = dict(os.environ)
  if scale.parallel > 1:
    # Concurrent JAX processes share the device: each takes a share, not the default 75%.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / scale.parallel:.2f}")
  result.update({"benchmark": "privimage_gpu", "scale": scale.name, "budget_s": budget,
                 "parallel": scale.parallel, "runs": {},
                 "command": ("GPU_SUITE_SMOKE=1 " if args.smoke else "") + COMMAND})

  prep_json = os.path.join(scale.runs_root, "prepare.json")
  prep = Child("prepare", _child_argv(args, "--prepare", "--carried", args.carried,
                                       "--result", prep_json), env, deadline)
  while prep.proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.5)
  prep.stop("the budget is spent")
  rc = prep.finish()
  result["prepare"] = {**(_read_json(prep_json) or {}), "rc": rc,
                       "wall_seconds": round(prep.elapsed(), 1)}
  if rc != 0:
    result["prepare"]["log_tail"] = list(prep.tail)
    for name in scale.runs:
      result["runs"][name] = {"status": "not run: the preparation failed"}
    return

  if args.dp_steps == "auto":
    seconds, source = step_seconds(args.step_json, scale)
    if seconds is None:
      # No timing (part a failed or ran out of time): a slow step is likely, so the fewest.
      dp_steps = scale.dp_steps_range[0]
      note = f"auto without a timing ({source}): the fewest, {dp_steps}"
    else:
      dp_steps, note = auto_dp_steps(scale, seconds, deadline - time.monotonic())
      note = f"auto, {note}; timing from {source}"
  elif args.dp_steps is not None:
    dp_steps, note = int(args.dp_steps), "given"
  else:
    dp_steps, note = scale.dp_sgd["steps"], "the scale's"
  result.update(dp_steps=dp_steps, dp_steps_note=note)
  print(json.dumps({"dp_steps": dp_steps, "why": note}), flush=True)
  all_configs = configs(scale, dp_steps)  # refuses bad settings before any run starts

  queue, running, post = list(scale.runs), [], []
  while queue or running:
    while queue and len(running) < scale.parallel:
      name = queue.pop(0)
      left = deadline - time.monotonic()
      if left < scale.overhead_s:
        result["runs"][name] = {"status": f"not started: {left:.0f} s of the budget left, a "
                                          f"run needs more than {scale.overhead_s:.0f} s"}
        continue
      out = os.path.join(scale.runs_root, name)
      res = os.path.join(scale.runs_root, f"{name}.result.json")
      if os.path.exists(res):
        os.remove(res)
      child = Child(name, _child_argv(args, "--child", name, "--dp-steps", str(dp_steps),
                                      "--result", res), env, deadline)
      print(f"[{name}] started at {time.monotonic() - t0:.0f} s ({left:.0f} s of the budget "
            f"left)", flush=True)
      running.append((Watch(child, out, dp_steps,
                            all_configs[name].options.pretrain.steps), res))
    time.sleep(1.0)
    post_s = sum(post) / len(post) if post else scale.overhead_s / 2
    for watch, res in list(running):
      child = watch.child
      watch.poll(t0, deadline, post_s)
      if child.proc.poll() is None and time.monotonic() >= deadline:
        child.stop("the budget is spent")
      if child.proc.poll() is None:
        continue
      rc = child.finish()
      running.remove((watch, res))
      entry = _read_json(res) if rc == 0 else None
      if entry is not None:
        entry["status"] = "ok"
        if watch.dp_done_at is not None:
          post.append(child.elapsed() - watch.dp_done_at)
      else:
        logged = _read_csv_rows(_run_file(watch.out, DP_SGD_LOG))
        entry = {"status": child.stopped or f"failed (exit {rc})", "rc": rc,
                 "wall_seconds": round(child.elapsed(), 1), "log_tail": list(child.tail),
                 "dp_steps_done": int(logged[-1][0]) if logged else 0}
      result["runs"][child.name] = entry
      print(json.dumps({"run": child.name, **{k: entry.get(k) for k in (
          "status", "accuracy", "total_epsilon", "seconds", "device")}}), flush=True)


def _finish(result: dict, scale: Scale, seconds: float) -> None:
  result["runs"] = {name: result["runs"].get(name, {"status": "not run: the parent stopped"})
                    for name in scale.runs}
  devices = {r.get("device") for r in result["runs"].values() if r.get("device")}
  result["device"] = devices.pop() if len(devices) == 1 else sorted(devices) or None
  result["seconds"] = round(seconds, 1)


def _stopped_by_signal(signum, frame):
  del frame
  raise SystemExit(128 + signum)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--smoke", action="store_true", help="the CPU check: tiny UNet, 2 runs")
  p.add_argument("--json", default=None, help="write the result here (default: "
                                              "$OUT/privimage_gpu.json, OUT=gpu_out)")
  p.add_argument("--budget", type=float, default=None,
                 help="seconds for the preparation and all runs (default: the scale's)")
  p.add_argument("--dp-steps", default=None,
                 help="DP-SGD steps of every run: a number, or 'auto' (from --step-json)")
  p.add_argument("--step-json", default=None, help="benchmarks.dp_sgd_step's JSON (auto)")
  p.add_argument("--carried", default=".gpu", help="the folder gpu_prepare.sh filled")
  p.add_argument("--bench-args", action="store_true",
                 help="print benchmarks.dp_sgd_step's arguments for this scale and exit")
  # The parent's own calls of its children:
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--result", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  scale = SMOKE if args.smoke else GPU
  if args.bench_args:
    print(" ".join(scale.bench_args()))
    return 0
  if args.dp_steps not in (None, "auto"):
    try:
      if int(args.dp_steps) < 0:
        raise ValueError
    except ValueError:
      p.error(f"--dp-steps takes an integer >= 0 or 'auto', got {args.dp_steps!r}")
  if args.prepare:
    from vpntk_jax import io_utils  # pylint: disable=import-outside-toplevel
    io_utils.write_json_atomic(args.result, child_prepare(args.carried))
    return 0
  if args.child:
    if args.child not in scale.runs:
      p.error(f"--child must be one of {scale.runs}, got {args.child!r}")
    child_run(args.child, scale, None if args.dp_steps is None else int(args.dp_steps),
              args.result)
    return 0
  path = args.json or os.path.join(os.environ.get("OUT") or "gpu_out", "privimage_gpu.json")
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  # A `timeout` around this process stops it with SIGTERM: stop the children, keep the result.
  signal.signal(signal.SIGTERM, _stopped_by_signal)
  result, t0 = {"runs": {}}, time.monotonic()
  try:
    parent(args, scale, result)
  except (SystemExit, KeyboardInterrupt) as e:
    result["interrupted"] = f"{type(e).__name__} {getattr(e, 'code', '')}".strip()
  finally:
    for child in list(Child.live):
      child.stop("the parent was stopped")
      if child.name in scale.runs:
        result["runs"].setdefault(child.name, {"status": "stopped: the parent was stopped",
                                               "log_tail": list(child.tail)})
    _finish(result, scale, time.monotonic() - t0)
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
  print(json.dumps({"part": "privimage_gpu", "file": path, "seconds": result.get("seconds"),
                    "dp_steps": result.get("dp_steps"), "runs": {
                        n: {k: r.get(k) for k in ("status", "accuracy", "total_epsilon",
                                                  "seconds")}
                        for n, r in result["runs"].items()}}), flush=True)
  ok = result["runs"] and all(r.get("status") == "ok" for r in result["runs"].values())
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
