"""`vpntk compare`: methods x epsilons x seeds as ordinary run directories, then one
table (mean +- std over seeds) and plots.

Each grid cell is a plain `vpntk synthesize` run (`pipeline.run_synthesis`) in
DIR/runs/METHOD_epsEPS_seedSEED, so everything a run offers (report, export,
`vpntk evaluate`) works on it. A second invocation with the same settings skips
the finished cells (metrics.json written), resumes those whose release is stored
(`--resume`: no new noise drawn) and redoes those that stopped before their
release (`--force`, which replaces only what the library wrote). A cell whose
stored config differs from the one asked for is an error, never silently reused.

JAX-free at import: the runs import the pipeline when they start, in this
process or in the worker processes of `jobs` > 1.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import math
import multiprocessing
import os

import numpy as np

from vpntk_jax import config as config_lib
from vpntk_jax import io_utils
from vpntk_jax import visualize
from vpntk_jax.config import RunConfig
from vpntk_jax.errors import ConfigError, RunDirError, VpntkError
from vpntk_jax.log import say
from vpntk_jax.run_dir import load_config, read_synthetic
from vpntk_jax.run_files import CONFIG, METRICS, PRIVACY, RELEASE, SYNTHETIC
from vpntk_jax.staging import is_nonempty_dir, make_dir

# What compare writes in DIR (besides runs/): it refuses a DIR that holds anything else.
RUNS = "runs"
GRID = "compare.json"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
PLOTS = "plots"
OWN_NAMES = frozenset({RUNS, GRID, TABLE_MD, TABLE_CSV, PLOTS})
# Fields two configs of one cell may differ in and still be the same run.
_IGNORED_DIFFERENCES = frozenset({"devices"})
# The metrics.json groups the table reports: every classifier's accuracy (and, under
# a benchmark protocol, its accuracy on the validation split), and the distances.
_ALL_KEYS = None
METRIC_GROUPS = {"accuracy": _ALL_KEYS, "validation_accuracy": _ALL_KEYS,
                 "inception": ("fid", "kid_mean"),
                 "public_feature_distance": ("fid", "kid_mean"),
                 "vgg16_frechet": ("frechet_distance",)}


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of the grid."""
  method: str
  epsilon: float
  seed: int

  @property
  def name(self) -> str:
    return f"{self.method}_eps{self.epsilon:g}_seed{self.seed}"


def numbers(text: str, kind: type, what: str) -> tuple:
  """"1,10" -> (1.0, 10.0): a comma-separated list of distinct numbers."""
  try:
    values = tuple(kind(x) for x in text.split(",") if x.strip())
  except ValueError:
    raise ConfigError(f"{what} takes comma-separated {kind.__name__}s, got {text!r}") from None
  if not values or len(set(values)) != len(values):
    raise ConfigError(f"{what} needs distinct values, got {text!r}")
  return values


def grid_configs(base: RunConfig, methods: tuple[str, ...], epsilons: tuple[float, ...],
                 seeds: tuple[int, ...], option_overrides: dict[str, dict] | None = None
                 ) -> list[tuple[Cell, RunConfig]]:
  """Every cell's config: `base` with the cell's method (its own defaults unless base
  is of that method), `option_overrides[method]` (its options.* settings), epsilon
  and seed. Each config is validated here, before any run starts."""
  if not (methods and epsilons and seeds):
    raise ConfigError("compare needs at least one method, epsilon and seed")
  if len(set(methods)) != len(methods):
    raise ConfigError(f"--methods lists a method twice: {','.join(methods)}")
  cells = []
  for method in methods:
    try:
      of_method = config_lib.with_overrides(base, {"method": method})
      of_method = config_lib.with_overrides(of_method, (option_overrides or {}).get(method, {}))
    except ConfigError as e:
      raise ConfigError(f"{method}: {e}") from None
    for epsilon in epsilons:
      for seed in seeds:
        config = dataclasses.replace(of_method, epsilon=float(epsilon), seed=int(seed))
        cells.append((Cell(method, float(epsilon), int(seed)), config.validate()))
  return cells


def check_out(out: str) -> None:
  """DIR is new, empty, or a compare directory: nothing else is ever written into."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise RunDirError(f"{out} exists and is not a directory")
  if is_nonempty_dir(out):
    foreign = sorted(set(os.listdir(out)) - OWN_NAMES)
    if GRID not in os.listdir(out) or foreign:
      raise RunDirError(f"{out} is not a vpntk compare directory (it holds "
                        f"{', '.join(foreign[:5]) or f'no {GRID}'}): choose another --out")


def cell_action(path: str, config: RunConfig) -> str:
  """What a cell's directory needs: "new", "finished", "resume" (its release is
  stored) or "redo" (it stopped before its release)."""
  if not is_nonempty_dir(path):
    return "new"
  if not os.path.exists(os.path.join(path, CONFIG)):
    raise RunDirError(f"{path} is not a vpntk run directory (no {CONFIG}); compare does "
                      f"not touch it: move it away")
  differ = [k for k in config_lib.diff(load_config(path), config)
            if k not in _IGNORED_DIFFERENCES]
  if differ:
    raise RunDirError(f"{path} was run with other settings ({', '.join(differ)} differ): "
                      f"run compare with the settings it was started with, or another --out")
  if os.path.exists(os.path.join(path, METRICS)):
    return "finished"
  if all(os.path.exists(os.path.join(path, f)) for f in (RELEASE, PRIVACY)):
    return "resume"
  return "redo"


def check_jobs(jobs) -> None:
  if not (isinstance(jobs, int) and not isinstance(jobs, bool) and jobs >= 1):
    raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")


def run_cell(config_json: dict, path: str, action: str, quiet: bool) -> dict:
  """One cell as `vpntk synthesize` runs it (in a worker process with `jobs` > 1).
  Returns {"action", "error"}: a VpntkError is reported, not raised, so the other
  cells go on."""
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  try:
    pipeline.run_synthesis(RunConfig.from_json(config_json), path, resume=action == "resume",
                           force=action == "redo", quiet=quiet)
  except VpntkError as e:
    return {"action": action, "error": str(e)}
  return {"action": action, "error": None}


def _init_worker(jobs: int) -> None:
  # Before the worker imports JAX: each of `jobs` processes on one accelerator takes
  # its share of the memory instead of JAX's default 75% each.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / jobs:.3f}")


def run_grid(cells: list[tuple[Cell, RunConfig]], out: str, *, jobs: int = 1,
             quiet: bool = False) -> dict[str, dict]:
  """Runs every cell not finished; returns {cell name: {"action", "error"}}."""
  check_jobs(jobs)
  runs = os.path.join(out, RUNS)
  plan = {cell.name: (config, os.path.join(runs, cell.name),
                      cell_action(os.path.join(runs, cell.name), config))
          for cell, config in cells}
  status = {name: {"action": action, "error": None}
            for name, (_, _, action) in plan.items() if action == "finished"}
  todo = [(name, c, path, action) for name, (c, path, action) in plan.items()
          if action != "finished"]
  make_dir(runs)
  say(f"compare: {len(plan)} runs, {len(status)} finished, {len(todo)} to run"
      + (f" ({jobs} at a time)" if jobs > 1 and len(todo) > 1 else ""), quiet)
  if jobs == 1 or len(todo) <= 1:
    for name, config, path, action in todo:
      say(f"compare: {name} ({action})", quiet)
      status[name] = run_cell(config.to_json(), path, action, quiet)
    return status
  # Spawned, not forked: JAX does not survive a fork.
  context = multiprocessing.get_context("spawn")
  workers = min(jobs, len(todo))
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=_init_worker,
                                              initargs=(workers,)) as pool:
    futures = {pool.submit(run_cell, config.to_json(), path, action, True): name
               for name, config, path, action in todo}
    for future in concurrent.futures.as_completed(futures):
      status[futures[future]] = future.result()
      say(f"compare: {futures[future]} done", quiet)
  return status


def metric_values(metrics: dict) -> dict[str, float]:
  """The numbers a run's metrics.json reports (METRIC_GROUPS), as {"accuracy.mlp": x}."""
  values = {}
  for group, keys in METRIC_GROUPS.items():
    found = metrics.get(group)
    if not isinstance(found, dict):
      continue
    for key, value in found.items():
      if ((keys is _ALL_KEYS or key in keys) and isinstance(value, (int, float))
          and not isinstance(value, bool)):
        values[f"{group}.{key}"] = float(value)
  return values


def summarize(cells: list[Cell], out: str) -> tuple[list[str], list[dict]]:
  """(metric names, one row per method and epsilon): the finished seeds' mean and
  standard deviation (ddof 1; NaN for one seed) of each metric."""
  groups: dict[tuple[str, float], list[dict]] = {}
  requested: dict[tuple[str, float], int] = {}
  for cell in cells:
    key = (cell.method, cell.epsilon)
    requested[key] = requested.get(key, 0) + 1
    path = os.path.join(out, RUNS, cell.name, METRICS)
    if os.path.exists(path):
      with open(path) as f:
        groups.setdefault(key, []).append(metric_values(json.load(f)))
  names = sorted({name for runs in groups.values() for run in runs for name in run})
  rows = []
  for key, count in requested.items():
    runs = groups.get(key, [])
    row = {"method": key[0], "epsilon": key[1], "seeds": len(runs), "requested": count}
    for name in names:
      values = np.asarray([run[name] for run in runs if name in run], np.float64)
      row[name] = (float(values.mean()) if values.size else math.nan,
                   float(values.std(ddof=1)) if values.size > 1 else math.nan,
                   int(values.size))
    rows.append(row)
  return names, rows


def _shown(mean: float, std: float) -> str:
  if math.isnan(mean):
    return "-"
  # Accuracies to 4 places; distances in the features' own (large) units to fewer.
  places = 4 if abs(mean) < 10 else 1 if abs(mean) < 1000 else 0
  return (f"{mean:.{places}f}" if math.isnan(std)
          else f"{mean:.{places}f} ± {std:.{places}f}")


def table_markdown(names: list[str], rows: list[dict]) -> str:
  header = ["method", "epsilon", "seeds"] + names
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    cells = [row["method"], f"{row['epsilon']:g}", f"{row['seeds']}/{row['requested']}"]
    lines.append("| " + " | ".join(cells + [_shown(*row[n][:2]) for n in names]) + " |")
  return "\n".join(lines) + "\n"


def table_csv(names: list[str], rows: list[dict]) -> str:
  text = io.StringIO()
  writer = csv.writer(text, lineterminator="\n")
  writer.writerow(["method", "epsilon", "seeds", "requested"]
                  + [f"{n}_{s}" for n in names for s in ("mean", "std", "n")])
  for row in rows:
    writer.writerow([row["method"], f"{row['epsilon']:g}", row["seeds"], row["requested"]]
                    + [("" if isinstance(v, float) and math.isnan(v) else v)
                       for n in names for v in row[n]])
  return text.getvalue()


def plot_accuracy(names: list[str], rows: list[dict], plots: str) -> list[str]:
  """One PNG per classifier: its test accuracy against epsilon, a line per method
  (mean over seeds, +-std bars). Returns the files written."""
  written = []
  epsilons = sorted({row["epsilon"] for row in rows})
  log_x = len(epsilons) > 1 and epsilons[0] > 0 and epsilons[-1] / epsilons[0] >= 10
  for name in (n for n in names if n.startswith("accuracy.")):
    series = {}
    for row in rows:
      xs, means, stds = series.setdefault(row["method"], ([], [], []))
      xs.append(row["epsilon"])
      means.append(row[name][0])
      stds.append(row[name][1])
    classifier = name[len("accuracy."):]
    image = visualize.render_series(series, title=f"test accuracy of {classifier} "
                                    f"(mean +- std over seeds)", x_label="epsilon",
                                    y_label="accuracy", log_x=log_x)
    path = os.path.join(plots, f"accuracy_{classifier}.png")
    visualize.save_png(path, image)
    written.append(path)
  return written


def _class_names(config: RunConfig, num_classes: int) -> tuple[str, ...]:
  """The run's class names, as its test set (or declared schema) gives them."""
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  names = None
  if config.data.has_test_set:
    names = pipeline.load_test_set(config).class_names
  elif config.data.classes:
    names = config.data.classes
  return tuple(names) if names else tuple(str(i) for i in range(num_classes))


def plot_samples(cells: list[tuple[Cell, RunConfig]], out: str, plots: str) -> list[str]:
  """One labelled sample grid per method, from its finished run at the largest
  epsilon (the first seed listed). Returns the files written."""
  chosen = {}
  for cell, config in cells:
    path = os.path.join(out, RUNS, cell.name)
    if not os.path.exists(os.path.join(path, METRICS)):
      continue
    best = chosen.get(cell.method)
    if best is None or cell.epsilon > best[0].epsilon:
      chosen[cell.method] = (cell, config, path)
  written = []
  for method, (cell, config, path) in chosen.items():
    images, labels = read_synthetic(os.path.join(path, SYNTHETIC))
    num_classes = int(labels.max()) + 1 if labels.size else 1
    names = _class_names(config, num_classes)
    grid = visualize.labelled_sample_grid(images, labels, names,
                                          title=f"{method}, epsilon {cell.epsilon:g}, "
                                                f"seed {cell.seed}")
    target = os.path.join(plots, f"samples_{method}.png")
    visualize.save_png(target, grid)
    written.append(target)
  return written


def compare(cells: list[tuple[Cell, RunConfig]], out: str, *, jobs: int = 1,
            quiet: bool = False) -> dict:
  """Runs the grid in `out` (resuming it), then writes table.md, table.csv and
  plots/. Raises a VpntkError naming the runs that failed, after writing what the
  finished ones give."""
  check_jobs(jobs)
  check_out(out)
  make_dir(out)
  grid = {"cells": [dataclasses.asdict(cell) | {"run": os.path.join(RUNS, cell.name)}
                    for cell, _ in cells]}
  io_utils.write_json_atomic(os.path.join(out, GRID), grid)
  status = run_grid(cells, out, jobs=jobs, quiet=quiet)
  names, rows = summarize([cell for cell, _ in cells], out)
  io_utils.write_bytes_atomic(os.path.join(out, TABLE_MD),
                             table_markdown(names, rows).encode())
  io_utils.write_bytes_atomic(os.path.join(out, TABLE_CSV), table_csv(names, rows).encode())
  plots = os.path.join(out, PLOTS)
  figures = plot_accuracy(names, rows, plots) + plot_samples(cells, out, plots)
  grid["status"] = status
  io_utils.write_json_atomic(os.path.join(out, GRID), grid)
  failed = {name: s["error"] for name, s in status.items() if s["error"]}
  if failed:
    listed = "\n".join(f"  {name}: {error}" for name, error in sorted(failed.items()))
    raise RunDirError(f"{len(failed)} of {len(cells)} runs failed (the table holds the "
                      f"others; the same command retries them):\n{listed}")
  actions = [s["action"] for s in status.values()]
  return {"out": out, "runs": len(cells),
          "skipped": actions.count("finished"), "resumed": actions.count("resume"),
          "redone": actions.count("redo"), "new": actions.count("new"),
          "table": os.path.join(out, TABLE_MD), "csv": os.path.join(out, TABLE_CSV),
          "plots": figures, "metrics": names}
