"""A DPImageBench synthetic set (gen.npz: x float NCHW in [0, 1], y; or its run folder)
as a data source: loaded as the stored pixels, and scored by `vpntk evaluate` as a run's
own synthetic set is."""

import json

import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax import pipeline
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.data import load_dataset
from vpntk_jax.errors import DataError

SHAPE = (8, 8, 1)
CLASSES = 3
FAST = {"classifiers": ("logistic_regression",)}


def _images(rng, labels):
  """Class c: a bright band in rows 2c..2c+2 over noise, so a classifier can learn it."""
  images = rng.integers(0, 60, (len(labels), *SHAPE), np.uint8)
  for i, c in enumerate(labels):
    images[i, 2 * c:2 * c + 2] = 255 - images[i, 2 * c:2 * c + 2]
  return images


@pytest.fixture(name="run")
def _run(tmp_path):
  """A finished run (config, synthetic.npz) whose data is a small .npz with a test split."""
  rng = np.random.default_rng(0)
  train_labels, test_labels = np.arange(60) % CLASSES, np.arange(45) % CLASSES
  data = tmp_path / "data.npz"
  np.savez(data, images=_images(rng, train_labels), labels=train_labels,
           images_test=_images(rng, test_labels), labels_test=test_labels)
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text(json.dumps(RunConfig(
      data=DataConfig(source=str(data)), epsilon=1.0, **FAST).to_json()))
  labels = (np.arange(30) % CLASSES).astype(np.int32)
  np.savez(run / "synthetic.npz", images=_images(rng, labels), labels=labels)
  return run, data


def _export(run, out) -> str:
  assert cli.main(["export", str(run), "--out", str(out)]) == 0
  return str(out)


def test_an_exported_gen_npz_loads_as_the_stored_pixels(run, tmp_path, capsys):
  run, _ = run
  bench = _export(run, tmp_path / "bench")
  capsys.readouterr()
  with np.load(run / "synthetic.npz") as z:
    images, labels = z["images"], z["labels"]
  # The prefix with the folder or the file, and both without it: one data set.
  for source in (f"dpimagebench:{bench}", f"dpimagebench:{bench}/gen/gen.npz", bench,
                 f"{bench}/gen/gen.npz"):
    ds = load_dataset(source)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.num_classes == CLASSES


def test_evaluate_scores_a_dpimagebench_set_as_it_scores_the_run(run, tmp_path, capsys):
  run, data = run
  bench = _export(run, tmp_path / "bench")
  # The run's own evaluation, then its export scored as a foreign synthetic set.
  own = pipeline.evaluate_run(str(run), quiet=True)
  out = tmp_path / "scores"
  theirs = pipeline.evaluate_source(f"dpimagebench:{bench}", test_source=str(data),
                                    overrides=FAST, out=str(out), quiet=True)
  assert theirs["accuracy"] == pytest.approx(own["accuracy"], abs=1e-6)
  assert theirs["test_size"] == own["test_size"] == 45
  assert json.loads((out / "metrics.json").read_text())["accuracy"] == theirs["accuracy"]
  # The classifier learnt the bands: the test is not vacuous.
  assert theirs["accuracy"]["logistic_regression"] > 1.0 / CLASSES + 0.2
  capsys.readouterr()
  # From the command line: a non-run positional is a source; metrics.json is not replaced.
  assert cli.main(["evaluate", bench, "--test-data", str(data), "--out", str(out)]) == 2
  assert "metrics.json exists" in capsys.readouterr().err


def _gen(tmp_path, **arrays):
  folder = tmp_path / "exp"
  (folder / "gen").mkdir(parents=True, exist_ok=True)
  np.savez(folder / "gen" / "gen.npz", **arrays)
  return str(folder)


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.full((4, 1, 8, 8), 1.5, np.float32), y=np.arange(4) % 3), "must lie in [0, 1]"),
    (dict(x=np.full((4, 1, 8, 8), np.nan, np.float32), y=np.arange(4) % 3), "NaN"),
    (dict(x=np.zeros((4, 8, 8, 1), np.float32), y=np.arange(4) % 3), "NCHW"),
    (dict(x=np.zeros((4, 1, 8, 8), np.uint8), y=np.arange(4) % 3), "must be float"),
    (dict(x=np.zeros((4, 1, 8, 8), np.float32)), "'y'"),
    (dict(x=np.zeros((4, 1, 8, 8), np.float32), y=np.zeros(3, int)), "shape (4,)"),
    (dict(x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4) + 0.5), "integers"),
])
def test_a_malformed_gen_npz_is_a_data_error(tmp_path, arrays, message):
  with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("[", r"\[").replace("]", r"\]")):
    load_dataset(f"dpimagebench:{_gen(tmp_path, **arrays)}")


def test_evaluate_of_a_source_needs_a_matching_test_set(run, tmp_path, capsys):
  _, data = run
  bench = _gen(tmp_path, x=np.zeros((6, 1, 8, 8), np.float32), y=np.arange(6) % 3)
  assert cli.main(["evaluate", bench]) == 2
  assert "--test-data" in capsys.readouterr().err
  labels_beyond = _gen(tmp_path, x=np.zeros((6, 1, 8, 8), np.float32), y=np.arange(6))
  assert cli.main(["evaluate", labels_beyond, "--test-data", str(data)]) == 2
  assert "labels must lie in [0, 3)" in capsys.readouterr().err
  rgb = _gen(tmp_path, x=np.zeros((6, 3, 8, 8), np.float32), y=np.arange(6) % 3)
  assert cli.main(["evaluate", rgb, "--test-data", str(data)]) == 2
  assert "same channels" in capsys.readouterr().err
  assert cli.main(["evaluate", str(tmp_path / "nothing"), "--test-data", str(data)]) == 2
  err = capsys.readouterr().err
  assert "cannot load dataset" in err and "dpimagebench:<path>" in err
  with pytest.raises(DataError, match="not a DPImageBench run folder"):
    load_dataset(f"dpimagebench:{tmp_path}")
