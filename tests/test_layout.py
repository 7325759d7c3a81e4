"""The package's shape: its modules' imports (also those inside functions) form no cycle."""

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


def test_no_import_cycles():
  paths = [os.path.join(root, f) for root, _, files in os.walk(PACKAGE)
           for f in files if f.endswith(".py")]
  modules = {_module_name(p) for p in paths}
  graph = {_module_name(p): _imports(p, modules) for p in paths}
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
