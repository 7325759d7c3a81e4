"""The Colab notebooks (colab/*.ipynb) execute end to end in SMALL mode.

SMALL mode (VPNTK_NOTEBOOK_SMALL=1) is what a CPU-only Colab runtime gets too:
tiny subsets, narrow networks, a few steps. Each notebook writes only under
VPNTK_NOTEBOOK_DIR, here a pytest temporary directory.
"""

import ast
import json
import os
import time
from pathlib import Path

import pytest

from conftest import host_devices_env

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = ("quickstart.ipynb", "vpntk.ipynb")
# A guard against SMALL settings creeping up; both take about a minute or less
# on a 2-core CPU (see colab/README.md).
MAX_SECONDS = 240


def _read(path):
  with open(path) as f:
    return json.load(f)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_is_clean(name):
  nb = nbformat.read(COLAB / name, as_version=4)
  nbformat.validate(nb)
  assert nb.nbformat == 4
  assert nb.metadata.kernelspec.name == "python3"
  assert nb.metadata.accelerator == "TPU"  # Colab opens it on a TPU runtime
  for cell in _code_cells(nb):
    assert cell.outputs == [] and cell.execution_count is None, "clear the outputs"
  first = _code_cells(nb)[0].source
  assert "'google.colab' in sys.modules" in first.replace('"', "'")
  assert "pip install" in first and "jax.default_backend()" in first
  assert "VPNTK_NOTEBOOK_SMALL" in first


def _setup_functions():
  """The functions the notebooks' install cell defines, without running the cell."""
  source = _code_cells(nbformat.read(COLAB / NOTEBOOKS[0], as_version=4))[0].source
  tree = ast.parse(source)
  namespace = {}
  for node in tree.body:
    if isinstance(node, (ast.Import, ast.FunctionDef)):
      exec(compile(ast.Module([node], []), "setup cell", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def test_the_notebooks_share_one_install_cell():
  cells = [_code_cells(nbformat.read(COLAB / n, as_version=4))[0].source for n in NOTEBOOKS]
  assert cells[0] == cells[1]
  assert "OWNER" not in cells[0] and "raise RuntimeError(\"Edit" not in cells[0]


@pytest.mark.parametrize("path,origin", [
    ("fileId=https%3A%2F%2Fgithub.com%2Fdp-lab%2Fvpntk_jax%2Fblob%2Fmain%2Fcolab%2Fvpntk.ipynb",
     "https://github.com/dp-lab/vpntk_jax@main"),
    ("fileId=https://github.com/a.b/my-fork/blob/release/1.2/colab/quickstart.ipynb",
     "https://github.com/a.b/my-fork@release/1.2"),
    ("fileId=1AbCdEfGhIjKlMnOp", None),  # a copy in Google Drive
    ("fileId=https%3A%2F%2Fgithub.com%2Fa%2Fb%2Fblob%2Fmain%2Fother%2Fx.ipynb", None),
    ("quickstart.ipynb", None),
])
def test_the_install_cell_reads_the_repository_from_the_notebook_s_github_origin(path, origin):
  assert _setup_functions()["github_origin"](path) == origin


def test_the_install_cell_prefers_vpntk_repo_and_says_what_to_do_without_an_origin():
  repository = _setup_functions()["repository"]
  github = "fileId=https://github.com/a/vpntk_jax/blob/v2/colab/vpntk.ipynb"
  assert repository({}, ["fileId=1AbC", github]) == "https://github.com/a/vpntk_jax@v2"
  assert repository({"VPNTK_REPO": "https://x/y@z"}, [github]) == "https://x/y@z"
  with pytest.raises(RuntimeError, match="not opened from GitHub.*VPNTK_REPO"):
    repository({}, ["fileId=1AbC"])
  other = "fileId=https://github.com/b/fork/blob/main/colab/vpntk.ipynb"
  with pytest.raises(RuntimeError, match="one of"):
    repository({}, [github, other])


def _execute(name, tmp_path, monkeypatch, devices=1):
  """Runs a notebook in a python3 kernel (this interpreter) that sees `devices` CPU
  devices; returns (nb, work dir, seconds)."""
  work = tmp_path / "work"
  for key, value in host_devices_env(devices).items():
    if key in ("XLA_FLAGS", "JAX_PLATFORMS"):
      monkeypatch.setenv(key, value)
  monkeypatch.setenv("VPNTK_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("VPNTK_NOTEBOOK_DIR", str(work))
  # The kernel inherits conftest.py's XLA_FLAGS (CI speed only).
  colab_before = sorted(os.listdir(COLAB))
  nb = nbformat.read(COLAB / name, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  t0 = time.perf_counter()
  client.execute()  # raises CellExecutionError on the first failing cell
  seconds = time.perf_counter() - t0
  print(f"{name}: {seconds:.1f} s")
  errors = [o for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
  assert not errors, errors
  assert sorted(os.listdir(COLAB)) == colab_before  # nothing written next to the notebooks
  assert sorted(os.listdir(tmp_path)) == ["work"]  # nor in the kernel's working directory
  assert seconds < MAX_SECONDS, f"{name} took {seconds:.0f} s in SMALL mode"
  return nb, work, seconds


def _text(nb):
  """All stdout/stderr and text/markdown output of a notebook, joined."""
  parts = []
  for cell in _code_cells(nb):
    for out in cell.outputs:
      if out.output_type == "stream":
        parts.append(out.text)
      elif "data" in out:
        parts.append(out.data.get("text/markdown", "") + out.data.get("text/plain", ""))
  return "\n".join(parts)


def _images(nb):
  return sum("image/png" in out.get("data", {}) for c in _code_cells(nb) for out in c.outputs)


def _check_run(run_dir, classifier):
  for name in ("config.json", "privacy.json", "release.npz", "synthetic.npz", "samples.png",
               "metrics.json", "report.md", "report.html"):
    assert (run_dir / name).exists(), name
  privacy = _read(run_dir / "privacy.json")
  assert privacy["within_budget"] is True and len(privacy["releases"]) == 1
  assert privacy["epsilon"] == 1.0 and privacy["delta"] == 1e-5
  assert 0.0 <= _read(run_dir / "metrics.json")["accuracy"][classifier] <= 1.0
  return _read(run_dir / "config.json")


def test_quickstart_notebook_on_eight_devices(tmp_path, monkeypatch):
  # A Colab TPU runtime's 8 cores, simulated: the run is data-parallel over all of them.
  nb, work, _ = _execute("quickstart.ipynb", tmp_path, monkeypatch, devices=8)
  config = _check_run(work / "runs" / "dpntk-fashion", "logistic_regression")
  assert config["method"] == "dp-ntk" and config["ntk_layers"][0] == 64
  assert _read(work / "runs" / "dpntk-fashion" / "privacy.json")["num_private_examples"] == 1000
  text = _text(nb)
  assert "SMALL mode" in text and "backend CPU, 8 device(s)" in text
  log = (work / "runs" / "dpntk-fashion" / "log.txt").read_text()
  assert "data-parallel over 8 CPU devices" in log
  assert "-differentially private with respect to the 1000 private training examples" in text
  assert "| logistic_regression |" in text
  assert _images(nb) == 1  # samples.png


def test_vpntk_notebook(tmp_path, monkeypatch):
  nb, work, _ = _execute("vpntk.ipynb", tmp_path, monkeypatch)
  for size in (28, 32):
    spec = _read(work / "public" / f"mnist-{size}" / "public.json")
    assert spec["image_shape"] == [size, size, 1] and "no privacy cost" in spec["privacy"]
  fashion = _check_run(work / "runs" / "vpntk-fashion", "cnn")
  assert fashion["method"] == "vp-ntk" and fashion["options"]["check_public_overlap"] is True
  prompt = fashion["options"]["prompt"]
  assert prompt["kappa"] == 0.5 and prompt["label_map"] == "learned"
  fallback = _check_run(work / "runs" / "vpntk-fallback-32", "cnn")
  assert fallback["data"]["image_size"] == 32
  assert fallback["options"]["public_model"].endswith(os.path.join("public", "mnist-32"))
  for run in ("vpntk-fashion", "vpntk-fallback-32"):
    assert (work / "runs" / run / "public.json").exists()
  text = _text(nb)
  assert "OFFLINE FALLBACK" in text and "prompt.kappa" in text
  assert "is treated as public" in text
  assert _images(nb) == 2
