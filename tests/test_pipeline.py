"""End to end on tiny settings: run directory contract, resume, refusal, bad input."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax import pipeline
from vpntk_jax.stages import mean_embedding
from vpntk_jax.training import loop as training_loop
from vpntk_jax.privacy.noise import LATTICE_FACTOR
from vpntk_jax.privacy.release import array_digest

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  """400 train / 200 test 28x28 images: real FashionMNIST when installed."""
  path = tmp_path_factory.mktemp("data") / "tiny.npz"
  if os.path.exists(FMNIST):
    from vpntk_jax.data import load_dataset
    tr, te = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    np.savez(path, x=tr.images[:400], y=tr.labels[:400], x_test=te.images[:200],
             y_test=te.labels[:200])
  else:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.integers(0, 256, (400, 28, 28, 1), np.uint8), y=np.arange(400) % 10,
             x_test=rng.integers(0, 256, (200, 28, 28, 1), np.uint8), y_test=np.arange(200) % 10)
  return str(path)


def _args(data, out, *extra):
  return ["synthesize", "--data", data, "--out", str(out), "--steps", "4", "--batch-size", "20",
          "--checkpoint-every", "2", "--num-synthetic", "200", "--eval-train-size", "100",
          "--classifiers", "logistic_regression,cnn", "--cnn-epochs", "1", "--noise-seed", "7",
          "--config", str(_TINY_CONFIG), "--quiet", *extra]


_TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_config.py")


def _read(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def finished_run(tiny_npz, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "run"
  assert cli.main(_args(tiny_npz, out)) == 0
  return out


def test_run_directory_contract(finished_run):
  names = set(os.listdir(finished_run))
  for name in ("config.json", "privacy.json", "release.npz", "checkpoints", "train_log.csv",
               "synthetic.npz", "samples.png", "loss.png", "metrics.json"):
    assert name in names, name
  privacy = _read(finished_run / "privacy.json")
  for key in ("epsilon", "delta", "sigma", "sensitivity", "accountant", "adjacency",
              "num_private_examples"):
    assert key in privacy, key
  assert privacy["num_private_examples"] == 400
  # 2/m, plus the lattice rounding's share (at most 1/LATTICE_FACTOR of it).
  assert 2 / 400 < privacy["sensitivity"] <= 2 / 400 * (1 + 1 / LATTICE_FACTOR)
  assert privacy["releases"][0]["granularity"] > 0
  assert privacy["within_budget"] is True
  metrics = _read(finished_run / "metrics.json")
  assert set(metrics["accuracy"]) == {"logistic_regression", "cnn"}
  assert all(0.0 <= a <= 1.0 for a in metrics["accuracy"].values())
  with np.load(finished_run / "synthetic.npz") as z:
    assert z["images"].shape == (200, 28, 28, 1) and z["images"].dtype == np.uint8
    assert np.bincount(z["labels"]).tolist() == [20] * 10
  log = np.loadtxt(finished_run / "train_log.csv", delimiter=",", skiprows=1, ndmin=2)
  assert log[-1, 0] == 4


def test_resume_extends_a_run_and_reuses_its_release(finished_run):
  before = (finished_run / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(finished_run), "--resume", "--steps", "8",
                   "--quiet"]) == 0
  assert (finished_run / "release.npz").read_bytes() == before  # no fresh noise
  assert len(_read(finished_run / "privacy.json")["releases"]) == 1
  log = np.loadtxt(finished_run / "train_log.csv", delimiter=",", skiprows=1, ndmin=2)
  assert log[-1, 0] == 8


def test_killed_then_resumed_run_equals_uninterrupted_run(tiny_npz, tmp_path, monkeypatch):
  straight = tmp_path / "straight"
  every_step = "--config.train.log_every=1"
  assert cli.main(_args(tiny_npz, straight, "--steps", "8", every_step)) == 0

  real_make = training_loop.make_train_step
  def dies_after_step_5(*args, **kwargs):
    step = real_make(*args, **kwargs)
    def wrapped(state):
      if int(state.step) == 5:
        raise KeyboardInterrupt("simulated kill")
      return step(state)
    return wrapped
  monkeypatch.setattr(training_loop, "make_train_step", dies_after_step_5)
  killed = tmp_path / "killed"
  with pytest.raises(KeyboardInterrupt):
    cli.main(_args(tiny_npz, killed, "--steps", "8", every_step))
  monkeypatch.undo()
  logged_steps = lambda run: [int(line.split(",")[0]) for line in
                              (run / "train_log.csv").read_text().splitlines()[1:]]
  assert logged_steps(killed) == [1, 2, 3, 4, 5]  # written as it went, past the step-4 checkpoint
  release = (killed / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(killed), "--resume", "--quiet"]) == 0
  assert (killed / "release.npz").read_bytes() == release
  assert logged_steps(killed) == logged_steps(straight) == list(range(1, 9))  # step 5 once
  with np.load(killed / "synthetic.npz") as a, np.load(straight / "synthetic.npz") as b:
    np.testing.assert_array_equal(a["images"], b["images"])


def test_ledger_fingerprints_the_release_and_a_swapped_release_is_refused(
    tiny_npz, finished_run, tmp_path, capsys):
  record = _read(finished_run / "privacy.json")["releases"][0]
  with np.load(finished_run / "release.npz") as z:
    embedding = z["embedding"]
  assert record["sha256"] == array_digest(embedding)
  # Another release of the same shape (one entry off by one float step) put in its place.
  run = tmp_path / "swapped"
  shutil.copytree(finished_run, run)
  other = embedding.copy()
  other.flat[0] = np.nextafter(other.flat[0], np.float32(np.inf))
  np.savez(run / "release.npz", embedding=other)
  before = {name: (run / name).read_bytes() for name in ("config.json", "privacy.json",
                                                          "release.npz", "train_log.csv")}
  assert cli.main(["synthesize", "--out", str(run), "--resume", "--steps", "8", "--quiet"]) == 2
  assert "sha256 differs" in capsys.readouterr().err
  assert {name: (run / name).read_bytes() for name in before} == before
  # Nor can another run take it over as a reused release; nothing is created.
  reuser = tmp_path / "reuser"
  assert cli.main(_args(tiny_npz, reuser, "--reuse-release", str(run))) == 2
  assert "is not the release its privacy.json records" in capsys.readouterr().err
  assert not reuser.exists()


def test_resume_refuses_a_changed_privacy_setting(finished_run):
  before = _read(finished_run / "privacy.json")
  assert cli.main(["synthesize", "--out", str(finished_run), "--resume", "--epsilon", "5",
                   "--quiet"]) == 2
  assert _read(finished_run / "privacy.json") == before


def test_existing_run_is_refused_without_force(tiny_npz, finished_run, capsys):
  listing = sorted(os.listdir(finished_run))
  assert cli.main(_args(tiny_npz, finished_run)) == 2
  assert "--resume" in capsys.readouterr().err
  assert sorted(os.listdir(finished_run)) == listing


def test_force_replaces_run_and_keeps_old_release_charged(tiny_npz, tmp_path):
  out = tmp_path / "run"
  assert cli.main(_args(tiny_npz, out)) == 0
  release = (out / "release.npz").read_bytes()
  # a second release of the same data must be asked for explicitly
  assert cli.main(_args(tiny_npz, out, "--force")) == 2
  assert (out / "release.npz").read_bytes() == release
  assert cli.main(_args(tiny_npz, out, "--force", "--new-release")) == 0
  privacy = _read(out / "privacy.json")
  assert [r["status"] for r in privacy["releases"]] == ["superseded", "active"]
  assert privacy["total_epsilon"] > privacy["epsilon"]
  assert privacy["within_budget"] is False
  assert not os.path.exists(str(out) + ".partial")


@pytest.mark.parametrize("extra,message", [
    (["--epsilon", "0"], "epsilon"),
    (["--epsilon", "-1"], "epsilon"),
    (["--delta", "1.5"], "delta"),
    (["--delta", "0"], "delta"),
])
def test_bad_privacy_parameters_exit_nonzero_and_write_nothing(tiny_npz, tmp_path, capsys,
                                                               extra, message):
  out = tmp_path / "run"
  assert cli.main(_args(tiny_npz, out, *extra)) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def _bad_npz(tmp_path, kind):
  x = np.zeros((40, 28, 28, 1), np.float32)
  y = np.arange(40) % 10
  if kind == "nan":
    x[3, 4, 5, 0] = np.nan
  elif kind == "labels":
    y[0] = 10
    x = x.astype(np.uint8)
    np.savez(tmp_path / "bad.npz", x=x, y=y, num_classes=10)
  path = tmp_path / "bad.npz"
  if kind != "labels":
    np.savez(path, x=x, y=y)
  return str(path)


def test_missing_data_directory(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(_args("fashion_mnist", out, "--data-dir", str(tmp_path / "nope"))) == 2
  assert "nope" in capsys.readouterr().err
  assert not out.exists()


def test_nan_pixels(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(_args(_bad_npz(tmp_path, "nan"), out)) == 2
  assert "NaN" in capsys.readouterr().err
  assert not out.exists()


def test_mixed_image_sizes(tmp_path, capsys):
  from PIL import Image
  for cls, size in (("a", (8, 8)), ("b", (9, 8))):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "imgs" / cls / "x.png")
  out = tmp_path / "run"
  assert cli.main(_args(str(tmp_path / "imgs"), out)) == 2
  assert "size" in capsys.readouterr().err
  assert not out.exists()


def test_evaluate_command_rewrites_metrics(finished_run, capsys):
  assert cli.main(["evaluate", str(finished_run), "--quiet"]) == 0
  assert "accuracy" in json.loads(capsys.readouterr().out)


def test_privacy_command_json(capsys):
  assert cli.main(["privacy", "--epsilon", "1", "--delta", "1e-5", "--json"]) == 0
  table = json.loads(capsys.readouterr().out)
  assert table["sigma"]["pld"] < 0.8 * table["sigma"]["rdp"]


def test_privacy_command_noise_std_per_adjacency(capsys):
  assert cli.main(["privacy", "--epsilon", "1", "--delta", "1e-5", "--num-examples", "60000",
                   "--json"]) == 0
  table = json.loads(capsys.readouterr().out)
  replace, add_remove = table["noise_std"]["replace_one"], table["noise_std"]["add_remove"]
  assert replace["pld"] == pytest.approx(2 * table["sigma"]["pld"] / 60000)
  assert add_remove["pld"] == pytest.approx(replace["pld"] / 2)


def test_release_warnings_are_public_and_diagnostics_are_private():
  from vpntk_jax.config import RunConfig
  from vpntk_jax.data import make_dataset
  images = np.zeros((20, 4, 4, 1), np.uint8)
  labels = np.arange(20) % 2
  data = make_dataset(images, labels, num_classes=3)
  assert "delta" in " ".join(mean_embedding.release_warnings(20, RunConfig(delta=0.1)))
  assert mean_embedding.release_warnings(20, RunConfig(delta=1e-5)) == []
  # Empty classes and the signal-to-noise ratio are exact private facts.
  text = " ".join(mean_embedding.private_diagnostics(np.full((8, 3), 1e-3), data, noise_std=1.0))
  assert "[2]" in text and "swamps" in text
  strong = mean_embedding.private_diagnostics(np.ones((8, 3)), make_dataset(
      images, labels, num_classes=2), noise_std=1e-3)
  assert len(strong) == 1 and "swamps" not in strong[0]


def test_run_from_in_memory_arrays(tiny_npz, tmp_path):
  from vpntk_jax import config_files
  from vpntk_jax.config import RunConfig
  from vpntk_jax.data import make_dataset
  z = np.load(tiny_npz)
  private = make_dataset(z["x"], z["y"], name="arrays")
  test = make_dataset(z["x_test"], z["y_test"], num_classes=private.num_classes, name="arrays-test")
  config = config_files.apply_overrides(config_files.load_config_file(_TINY_CONFIG, RunConfig), {
      "train.steps": "2", "train.batch_size": "20", "num_synthetic": "100",
      "eval_train_size": "50", "classifiers": "logistic_regression", "noise_seed": "1"})
  summary = pipeline.run_synthesis(config, str(tmp_path / "mem"), quiet=True,
                                   datasets=(private, test))
  assert summary["accuracy"]["logistic_regression"] >= 0
  assert _read(tmp_path / "mem" / "config.json")["data"]["source"] == "in-memory:arrays"
  with np.load(tmp_path / "mem" / "synthetic.npz") as s:
    assert s["images"].shape == (100, 28, 28, 1)
  with pytest.raises(Exception, match="in-memory"):
    pipeline.evaluate_run(str(tmp_path / "mem"))


def test_validation_release_is_charged_and_picks_the_closest_checkpoint(tiny_npz, tmp_path,
                                                                         monkeypatch):
  out = tmp_path / "val"
  # The last checkpoint is made the worst, so picking it (no selection) would be caught.
  real_distance = training_loop.make_validation_distance
  def last_is_worst(*args, **kwargs):
    distance = real_distance(*args, **kwargs)
    return lambda state: distance(state) + (1e9 if int(state.step) == 6 else 0.0)
  monkeypatch.setattr(training_loop, "make_validation_distance", last_is_worst)
  # A constant learning rate, so a shorter run follows the same trajectory (below).
  assert cli.main(_args(tiny_npz, out, "--steps", "6", "--checkpoint-every", "2",
                        "--validation-noise-scale", "10",
                        "--config.train.schedule=constant")) == 0
  privacy = _read(out / "privacy.json")
  main, val = privacy["releases"]
  assert (main["name"], val["name"]) == ("labelled_mean_embedding", "validation_embedding")
  assert val["sigma"] == pytest.approx(10 * main["sigma"])
  assert val["sensitivity"] == main["sensitivity"]
  # Both releases together spend the budget: eps(main and validation) <= epsilon.
  assert privacy["within_budget"] is True
  assert float(privacy["total_epsilon"]) == pytest.approx(privacy["epsilon"], rel=1e-2)
  from vpntk_jax.privacy import accounting
  alone = accounting.calibrate_gaussian(privacy["epsilon"], privacy["delta"])
  assert main["sigma"] > alone  # the main release pays for the validation one
  with np.load(out / "release.npz") as z:
    assert set(z.files) == {"embedding", "validation_embedding"}
    assert not np.array_equal(z["embedding"], z["validation_embedding"])
  selection = _read(out / "selection.json")
  distances = {int(k): v for k, v in selection["distances"].items()}
  assert sorted(distances) == [2, 4, 6]
  assert selection["selected_step"] == min(distances, key=distances.get) < 6
  assert os.path.isdir(out / "best")
  report = (out / "report.md").read_text()
  assert f"step {selection['selected_step']}" in report and "validation_embedding" in report

  # Synthesis used the selected checkpoint: a run stopped at that step makes the same images.
  stopped = tmp_path / "stopped"
  # (Same settings, so the same distances: its own choice among steps <= the best is the best.)
  assert cli.main(_args(tiny_npz, stopped, "--steps", str(selection["selected_step"]),
                        "--validation-noise-scale", "10", "--config.train.schedule=constant",
                        "--reuse-release", str(out))) == 0
  with np.load(out / "synthetic.npz") as a, np.load(stopped / "synthetic.npz") as b:
    np.testing.assert_array_equal(a["images"], b["images"])

  # Resuming reuses both releases and the selection record.
  release = (out / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(out), "--resume", "--steps", "8", "--quiet"]) == 0
  assert (out / "release.npz").read_bytes() == release
  assert len(_read(out / "privacy.json")["releases"]) == 2
  assert sorted(int(k) for k in _read(out / "selection.json")["distances"]) == [2, 4, 6, 8]


@pytest.mark.parametrize("extra, message", [
    (["--validation-noise-scale", "0"], "validation_noise_scale"),
    (["--validation-noise-scale", "10", "--accountant", "analytic"], "analytic"),
])
def test_bad_validation_settings_exit_nonzero_and_write_nothing(tiny_npz, tmp_path, capsys,
                                                                extra, message):
  out = tmp_path / "bad"
  assert cli.main(_args(tiny_npz, out, *extra)) != 0
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_a_ledger_without_its_fingerprint_is_refused(finished_run, tmp_path, capsys):
  run = tmp_path / "unfingerprinted"
  shutil.copytree(finished_run, run)
  privacy = _read(run / "privacy.json")
  privacy["releases"][0]["sha256"] = None
  (run / "privacy.json").write_text(json.dumps(privacy))
  assert cli.main(["synthesize", "--out", str(run), "--resume", "--steps", "8", "--quiet"]) == 2
  assert "has no sha256" in capsys.readouterr().err
  del privacy["releases"][0]["sha256"]
  (run / "privacy.json").write_text(json.dumps(privacy))
  assert cli.main(["synthesize", "--out", str(run), "--resume", "--steps", "8", "--quiet"]) == 2
  assert "has no sha256" in capsys.readouterr().err


def test_a_second_process_on_the_same_out_fails_at_once(tiny_npz, tmp_path, capsys):
  import socket
  out = tmp_path / "busy"
  lock = tmp_path / "busy.lock"
  lock.write_text(f"{socket.gethostname()} {os.getpid()}")  # a live holder: this process
  assert cli.main(_args(tiny_npz, out)) == 2
  assert "is in use by another vpntk process" in capsys.readouterr().err
  assert not out.exists() and lock.exists()
  # A lock whose process is gone is stale: the run takes it over and lets go at the end.
  lock.write_text(f"{socket.gethostname()} {_exited_pid()}")
  assert cli.main(_args(tiny_npz, out, "--steps", "2")) == 0
  assert not lock.exists() and (out / "synthetic.npz").exists()


def _exited_pid() -> int:
  proc = subprocess.Popen(["true"])
  proc.wait()
  return proc.pid


def test_releases_of_a_replacement_that_died_stay_charged(tiny_npz, tmp_path):
  out = tmp_path / "run"
  assert cli.main(_args(tiny_npz, out, "--steps", "2")) == 0
  # A --force --new-release run killed after its release: its staging ledger holds
  # the old release (superseded) and its own.
  staging = tmp_path / "run.partial"
  staging.mkdir()
  old = _read(out / "privacy.json")
  died = dict(old, releases=[dict(old["releases"][0], status="superseded"),
                             dict(old["releases"][0], created_utc="2026-01-01T00:00:00Z",
                                  sha256="ab" * 32)])
  (staging / "privacy.json").write_text(json.dumps(died))
  assert cli.main(_args(tiny_npz, out, "--steps", "2", "--force", "--new-release")) == 0
  privacy = _read(out / "privacy.json")
  assert [r["status"] for r in privacy["releases"]] == ["superseded", "superseded", "active"]
  assert privacy["num_releases"] == 3
