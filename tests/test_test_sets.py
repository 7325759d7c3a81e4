"""Own data without a test split: a test set from another source (--test-data), or
none at all (the schema then declared, nothing evaluated), and synthesis without
evaluation."""

import json

import numpy as np
import pytest
from PIL import Image

from vpntk_jax import cli
from vpntk_jax.blocks import NO_TEST_SET, DataConfig
from vpntk_jax.data import load_test_source
from vpntk_jax.errors import ConfigError

CLASSES = ("circle", "square")
TINY = ["--method", "dp-ntk", "--steps", "2", "--batch-size", "8", "--num-synthetic", "20",
        "--eval-train-size", "20", "--classifiers", "sklearn-logistic_regression", "--quiet",
        '--config.ntk_layers=[16,"relu","layernorm",2]']


def _folder(root, n_per_class=6, size=8, seed=0):
  """root/<class>/<i>.png, grey, no split folders."""
  rng = np.random.default_rng(seed)
  for name in CLASSES:
    (root / name).mkdir(parents=True)
    for i in range(n_per_class):
      Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(root / name / f"{i}.png")
  return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("sets")
  rng = np.random.default_rng(1)
  test_npz = root / "test.npz"  # plain keys: a file of one split
  np.savez(test_npz, x=rng.integers(0, 256, (10, 8, 8, 1), np.uint8), y=np.arange(10) % 2,
           class_names=np.asarray(CLASSES))
  return {"folder": str(_folder(root / "private")), "test_npz": str(test_npz), "root": root}


def _synthesize(out, data, *extra):
  return cli.main(["synthesize", "--data", data, "--out", str(out), *TINY, *extra])


def test_a_given_test_source_is_its_test_split_or_its_only_one(sources, tmp_path):
  only = load_test_source(sources["test_npz"])
  assert len(only) == 10 and only.class_names == CLASSES
  split = tmp_path / "split.npz"
  np.savez(split, x=np.zeros((3, 8, 8), np.uint8), y=[0, 1, 0],
           x_test=np.zeros((5, 8, 8), np.uint8), y_test=[1, 0, 1, 0, 1])
  assert len(load_test_source(str(split))) == 5


def test_a_folder_without_a_test_split_names_the_option_that_gives_one(sources, tmp_path,
                                                                        capsys):
  out = tmp_path / "run"
  assert _synthesize(out, sources["folder"]) == 2
  assert "--test-data SOURCE" in capsys.readouterr().err
  assert not out.exists()


def test_a_folder_with_a_separate_test_file_runs_and_is_evaluated_on_it(sources, tmp_path):
  out = tmp_path / "run"
  assert _synthesize(out, sources["folder"], "--test-data", sources["test_npz"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["test_set"] == f"{sources['test_npz']}:train"
  assert set(metrics["accuracy"]) == {"sklearn-logistic_regression"}


def test_without_a_test_set_the_declared_schema_shapes_the_run_and_nothing_is_evaluated(
    sources, tmp_path, capsys):
  out = tmp_path / "run"
  # Declared in another order than the folders sort: the labels follow the declaration.
  assert _synthesize(out, sources["folder"], "--test-data", "none", "--classes",
                     "square,circle", "--channels", "3", "--image-size", "8") == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["evaluated"] is False and "no test set was given" in metrics["reason"]
  assert "accuracy" not in metrics
  with np.load(out / "synthetic.npz") as z:
    assert z["images"].shape == (20, 8, 8, 3) and set(z["labels"].tolist()) == {0, 1}
  assert json.loads((out / "privacy.json").read_text())["releases"][0]["shape"][-1] == 2
  report = (out / "report.md").read_text()
  assert "Not evaluated: no test set was given" in report
  assert "No test set was used" in report and "was used only to evaluate" not in report
  # Evaluated later on a test set named then; without one the error says how.
  capsys.readouterr()
  assert cli.main(["evaluate", str(out)]) == 2
  assert "--test-data SOURCE" in capsys.readouterr().err
  wrong = sources["root"] / "wrong.npz"
  np.savez(wrong, x=np.zeros((4, 8, 8, 1), np.uint8), y=[0, 1, 2, 0])
  assert cli.main(["evaluate", str(out), "--test-data", str(wrong)]) == 2
  assert "3 classes" in capsys.readouterr().err
  rgb = sources["root"] / "rgb.npz"
  np.savez(rgb, x=np.zeros((4, 8, 8, 3), np.uint8), y=[0, 1, 1, 0])
  assert cli.main(["evaluate", str(out), "--test-data", str(rgb), "--quiet"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics["accuracy"]) == {"sklearn-logistic_regression"} and metrics["test_set"].startswith(
      str(rgb))


def test_skip_evaluation_keeps_the_test_schema_and_evaluates_nothing(sources, tmp_path):
  out = tmp_path / "run"
  assert _synthesize(out, sources["folder"], "--test-data", sources["test_npz"],
                     "--skip-evaluation") == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["evaluated"] is False and "switched off" in metrics["reason"]


@pytest.mark.parametrize("fields,message", [
    (dict(test_source=NO_TEST_SET), "missing classes, channels, image_size"),
    (dict(test_source=NO_TEST_SET, classes=("a",), channels=2, image_size=8), "channels must be"),
    (dict(test_source=NO_TEST_SET, classes=("a", "a"), channels=1, image_size=8), "distinct"),
    (dict(classes=("a", "b")), "without a test set"),
    (dict(test_source=""), "non-empty"),
])
def test_a_schema_declared_wrongly_is_a_config_error(fields, message):
  with pytest.raises(ConfigError, match=message):
    DataConfig(source="x.npz", **fields).validate()


def test_a_private_class_the_declaration_lacks_is_an_error(sources, tmp_path, capsys):
  out = tmp_path / "run"
  assert _synthesize(out, sources["folder"], "--test-data", "none", "--classes", "circle",
                     "--channels", "1", "--image-size", "8") == 2
  assert "square" in capsys.readouterr().err and not out.exists()
