"""The package's shape: its modules' imports (also those inside functions) form no cycle
and never run up a floor (FLOORS); only privacy/ draws noise; experiments/ and benchmarks/
do not import each other."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vpntk_jax")


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _imports(path: str, modules: set) -> set:
  """vpntk_jax modules a module imports, anywhere but under `if TYPE_CHECKING:`."""
  with open(path) as f:
    tree = ast.parse(f.read())
  for node in ast.walk(tree):
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
      node.body = []
  found = set()
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    found |= {n for n in names if n in modules}
  return found


def _package_graph() -> dict:
  """module -> the vpntk_jax modules it imports."""
  paths = [os.path.join(root, f) for root, _, files in os.walk(PACKAGE)
           for f in files if f.endswith(".py")]
  modules = {_module_name(p) for p in paths}
  return {_module_name(p): _imports(p, modules) for p in paths}


def test_no_import_cycles():
  graph = _package_graph()
  # A package's __init__ importing its own submodules is how it re-exports them.
  graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in graph.items()}
  state, cycles = {}, []

  def visit(m, stack):
    state[m] = "open"
    for d in sorted(graph.get(m, ())):
      if state.get(d) == "open":
        cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d, stack + [d])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not cycles, "\n".join(cycles)


# What draws a release's noise or writes a ledger record: only privacy/ may use it.
_MECHANISM_NAMES = {"noise_rng", "generator", "gaussian_release", "ReleaseRecord", "Lattice",
                    "secret_key", "lattice_grad_sum", "release_record", "noisy_count"}


def test_noise_draws_and_ledger_records_are_made_only_under_privacy():
  """Stages ask privacy/ to release a statistic or run a step (a plan, release_statistic,
  the DP-SGD step); none draws noise, picks a noise stream or builds a record itself."""
  found = []
  for root, _, files in os.walk(PACKAGE):
    if os.path.relpath(root, PACKAGE).split(os.sep)[0] == "privacy":
      continue
    for f in files:
      if not f.endswith(".py"):
        continue
      path = os.path.join(root, f)
      with open(path) as handle:
        tree = ast.parse(handle.read())
      for node in ast.walk(tree):
        if (isinstance(node, ast.ImportFrom) and node.module
            and node.module.startswith("vpntk_jax.privacy")):
          found += [f"{path}: imports {a.name}" for a in node.names
                    if a.name in _MECHANISM_NAMES or a.name == "noise"]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("spawn", "SeedSequence")):
          found.append(f"{path}:{node.lineno}: calls .{node.func.attr}()")
  assert not found, "\n".join(found)


# The package's floors, lowest first. A module may import its own floor and those
# below, never one above (imports inside functions count: they run too), so each
# floor can be read, tested and reused without what is built on it. The longest
# listed name places a module (a package places its submodules); the bare package
# name places only vpntk_jax/__init__.py, so a new module needs a row of its own or
# its package's: it is placed on purpose.
FLOORS = {
    # 0 declarations, JAX-free: what a config, its files and `vpntk --help` are made of.
    "vpntk_jax": 0, "vpntk_jax.errors": 0, "vpntk_jax.run_files": 0,
    "vpntk_jax.config_files": 0, "vpntk_jax.settings": 0, "vpntk_jax.blocks": 0,
    "vpntk_jax.protocols": 0,
    # 1 utilities any stage uses: files, output directories, arrays, devices, logs.
    "vpntk_jax.io_utils": 1, "vpntk_jax.staging": 1, "vpntk_jax.arrays": 1,
    "vpntk_jax.distributed": 1, "vpntk_jax.sharding": 1, "vpntk_jax.log": 1,
    "vpntk_jax.tensorboard_events": 1, "vpntk_jax.visualize": 1, "vpntk_jax._nt_compat": 1,
    "vpntk_jax.data": 2,
    # Every private mechanism: noise, accounting, the ledger, the DP-SGD step (only it
    # draws noise: test_noise_draws_and_ledger_records_are_made_only_under_privacy).
    "vpntk_jax.privacy": 3,
    # Feature maps, then the networks (the UNet counts parameters with features.ntk).
    "vpntk_jax.features": 4,
    "vpntk_jax.models": 5,
    # Post-processing: training on released statistics, diffusion training on top of it.
    "vpntk_jax.training": 6,
    "vpntk_jax.diffusion": 7,
    # Classifiers and FID; public pretraining trains its extractor with evaluation.cnn.
    "vpntk_jax.evaluation": 8,
    "vpntk_jax.public": 9,
    "vpntk_jax.stages": 10,
    "vpntk_jax.methods": 11,
    # RunConfig reads each method's block from the registry.
    "vpntk_jax.config": 12,
    # What reads and writes a run's files: they read its RunConfig.
    "vpntk_jax.run_dir": 13, "vpntk_jax.report": 13, "vpntk_jax.export": 13,
    "vpntk_jax.convert_vgg": 13, "vpntk_jax.convert_vgg16": 13,
    "vpntk_jax.pipeline": 14,
    # A grid of pipeline runs and its table.
    "vpntk_jax.compare": 14,
    "vpntk_jax.cli": 15,
}


def _floor(module: str):
  parts = module.split(".")
  for n in range(len(parts), 1, -1):
    if ".".join(parts[:n]) in FLOORS:
      return FLOORS[".".join(parts[:n])]
  return FLOORS["vpntk_jax"] if module == "vpntk_jax" else None


def test_every_module_has_a_floor():
  graph = _package_graph()
  unplaced = sorted(m for m in graph if _floor(m) is None)
  assert not unplaced, f"give these a floor in FLOORS: {unplaced}"
  stale = sorted(set(FLOORS) - set(graph))
  assert not stale, f"FLOORS names what is not a module: {stale}"


def test_no_import_runs_up_a_floor():
  graph = _package_graph()
  upward = sorted(f"{m} (floor {_floor(m)}) -> {d} (floor {_floor(d)})"
                  for m, deps in graph.items() for d in deps
                  if None not in (_floor(m), _floor(d)) and _floor(d) > _floor(m))
  assert len(upward) == 0, f"{len(upward)} imports run up a floor:\n" + "\n".join(upward)


def _script_imports(path: str) -> set:
  """Top-level names a script imports (absolute imports, anywhere in the file)."""
  with open(path) as f:
    tree = ast.parse(f.read())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.add(node.module.split(".")[0])
  return found


def test_experiments_and_benchmarks_do_not_import_each_other():
  """Both build on vpntk_jax only: either folder can change (or go) without the other.
  What both need belongs in the library."""
  found = []
  for folder, other in (("experiments", "benchmarks"), ("benchmarks", "experiments")):
    for root, dirs, files in os.walk(os.path.join(REPO, folder)):
      dirs[:] = [d for d in dirs if d != "__pycache__"]
      found += [f"{os.path.relpath(os.path.join(root, f), REPO)} imports {other}"
                for f in sorted(files) if f.endswith(".py")
                and other in _script_imports(os.path.join(root, f))]
  assert not found, "\n".join(found)
