"""Damaged files exit 2 with one message naming the file, never a traceback: a run's
Orbax checkpoint on --resume (its ledger untouched), a run's synthetic.npz on export
(and an --out that is a file), a public model directory's checkpoint."""

import os
import shutil
import subprocess
import sys

import pytest

from public_fixtures import random_npz, vp_args
from test_export import _run_dir
from test_textual_inversion import public_model  # noqa: F401  (a fixture)
from vpntk_jax import cli

_TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_config.py")


def _truncate_largest_file(directory) -> str:
  """Halves the largest file under `directory` (an Orbax checkpoint: one of its
  array data files) and returns its path."""
  files = [os.path.join(d, f) for d, _, names in os.walk(directory) for f in names]
  path = max(files, key=os.path.getsize)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  return path


def _assert_one_clean_error(err: str, *needles: str) -> None:
  assert "Traceback" not in err and "Exception ignored" not in err, err
  assert "never retrieved" not in err and err.count("vpntk: error:") == 1, err
  for needle in needles:
    assert needle in err, (needle, err)


# Each run: a checkpoint at step 2, its last; no evaluation.
_RESUMABLE_RUNS = {
    "dp-ntk": ["--steps", "2", "--batch-size", "8", "--checkpoint-every", "2",
               "--config", _TINY_CONFIG],
    "dpdm": ["--method", "dpdm", "--start-model", "none", "--unet-size", "tiny", "--dp-steps", "2", "--dp-batch-size",
             "16", "--noise-multiplicity", "1", "--sample-steps", "1", "--pretrain-steps", "0",
             "--config.options.dp_sgd.checkpoint_every=2"],
}


@pytest.mark.parametrize("method", sorted(_RESUMABLE_RUNS))
def test_resume_from_a_corrupt_checkpoint_exits_2_and_leaves_the_ledger(method, tmp_path,
                                                                         capsys):
  data = random_npz(tmp_path / "private.npz", 100, 40, 4)
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--data", data, "--out", str(out), *_RESUMABLE_RUNS[method],
                   "--num-synthetic", "8", "--noise-seed", "3", "--config.evaluate=false",
                   "--quiet"]) == 0
  step = out / "checkpoints" / "2"
  _truncate_largest_file(step)
  ledger, config = (out / "privacy.json").read_bytes(), (out / "config.json").read_bytes()
  capsys.readouterr()
  # Resumed with a post-processing setting changed: still nothing rewritten.
  assert cli.main(["synthesize", "--out", str(out), "--resume", "--num-synthetic", "12",
                   "--quiet"]) == 2
  _assert_one_clean_error(capsys.readouterr().err, f"the checkpoint in {step} is corrupt")
  assert (out / "privacy.json").read_bytes() == ledger
  assert (out / "config.json").read_bytes() == config


@pytest.mark.parametrize("command", ["export", "evaluate"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_export_or_evaluate_of_a_corrupt_synthetic_set_exits_2_naming_it(tmp_path, capsys, damage, command):
  run, _, _ = _run_dir(tmp_path)
  synthetic = run / "synthetic.npz"
  size = synthetic.stat().st_size
  if damage == "truncated":
    with open(synthetic, "r+b") as f:
      f.truncate(size // 2)
  else:
    synthetic.write_bytes(os.urandom(size))
  out = tmp_path / "bench"
  args = {"export": ["export", str(run), "--out", str(out)], "evaluate": ["evaluate", str(run)]}
  assert cli.main(args[command]) == 2
  _assert_one_clean_error(capsys.readouterr().err, f"{synthetic} is corrupt")
  assert not out.exists()


def test_export_to_an_out_that_is_a_file_is_refused_and_leaves_it(tmp_path, capsys):
  run, _, _ = _run_dir(tmp_path)
  out = tmp_path / "gen.npz"
  out.write_bytes(b"someone else's file")
  for force in ([], ["--force"]):  # --force replaces an earlier export, not other files
    assert cli.main(["export", str(run), "--out", str(out), *force]) == 2
    _assert_one_clean_error(capsys.readouterr().err, f"{out} exists")
    assert out.read_bytes() == b"someone else's file"


def _cli(*args) -> subprocess.CompletedProcess:
  """The CLI in its own process: the noise of abandoned reads can come at exit."""
  return subprocess.run([sys.executable, "-m", "vpntk_jax.cli", *args], capture_output=True,
                        text=True, timeout=300, check=False)


def test_a_corrupt_public_model_exits_2_saying_so(tiny_public, private_npz, tmp_path):
  public_dir = tmp_path / "public"
  shutil.copytree(tiny_public[0], public_dir)
  _truncate_largest_file(public_dir / "models")
  out = tmp_path / "run"
  done = _cli(*vp_args(private_npz, public_dir, out))
  assert done.returncode == 2, done.stderr
  _assert_one_clean_error(done.stderr, f"the checkpoint in {public_dir / 'models'} is corrupt")
  assert "does not match" not in done.stderr and not out.exists()


def test_a_corrupt_public_diffusion_model_exits_2_saying_so(public_model, tmp_path):  # noqa: F811
  data = random_npz(tmp_path / "private.npz", 24, 20, 2, shape=(28, 28, 1))
  model_dir = tmp_path / "diffusion"
  shutil.copytree(public_model, model_dir)
  _truncate_largest_file(model_dir / "models")
  out = tmp_path / "run"
  done = _cli("synthesize", "--method", "dpagg-ti", "--diffusion-model", str(model_dir),
              "--data", data, "--out", str(out), "--quiet")
  assert done.returncode == 2, done.stderr
  _assert_one_clean_error(done.stderr, f"the checkpoint in {model_dir / 'models'} is corrupt")
  assert "does not match" not in done.stderr and not out.exists()
