"""vpntk compare: a 2 x 2 x 2 grid of tiny runs gives a table of the runs' own metrics
(mean +- std over seeds), plots, and a second invocation skips the finished runs and
resumes a half-finished one from its stored release."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from public_fixtures import random_npz
from vpntk_jax import cli, compare

TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_config.py")
METHODS, EPSILONS, SEEDS = ("dp-ntk", "dp-merf"), (1.0, 10.0), (0, 1)


def _command(data, out, *extra):
  return (["compare", "--methods", "dp-ntk,dp-merf", "--epsilons", "1,10", "--seeds", "0,1",
           "--out", str(out), "--config", TINY_CONFIG, "--data", data, "--train-steps", "2",
           "--batch-size", "16", "--num-synthetic", "40", "--eval-train-size", "40",
           "--classifiers", "sklearn-logistic_regression", "--rff-features", "100", "--quiet"]
          + list(extra))


def _run(capsys, argv) -> dict:
  assert cli.main(argv) == 0
  return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return random_npz(tmp_path_factory.mktemp("data") / "d.npz", 200, 80, 4)


def test_grid_table_plots_and_a_second_invocation(tmp_path, data, capsys):
  out = tmp_path / "cmp"
  first = _run(capsys, _command(data, out))
  assert (first["runs"], first["new"], first["skipped"]) == (8, 8, 0)
  runs = {(m, e, s): out / "runs" / compare.Cell(m, e, s).name
          for m in METHODS for e in EPSILONS for s in SEEDS}
  accuracy = {key: json.loads((path / "metrics.json").read_text())["accuracy"]
              ["sklearn-logistic_regression"] for key, path in runs.items()}

  # The table holds each (method, epsilon)'s mean and sample std over the two seeds.
  with open(out / "table.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["method"], float(r["epsilon"])) for r in rows] == [
      (m, e) for m in METHODS for e in EPSILONS]
  for row in rows:
    values = [accuracy[(row["method"], float(row["epsilon"]), s)] for s in SEEDS]
    assert row["seeds"] == "2"
    assert float(row["accuracy.sklearn-logistic_regression_mean"]) == pytest.approx(
        np.mean(values))
    assert float(row["accuracy.sklearn-logistic_regression_std"]) == pytest.approx(
        np.std(values, ddof=1))
  markdown = (out / "table.md").read_text().splitlines()
  assert markdown[0].startswith("| method | epsilon | seeds | accuracy.sklearn")
  assert len(markdown) == 2 + len(rows) and all("2/2" in line for line in markdown[2:])
  assert all(" ± " in line for line in markdown[2:])
  for name in ("accuracy_sklearn-logistic_regression", "samples_dp-ntk", "samples_dp-merf"):
    with Image.open(out / "plots" / f"{name}.png") as image:
      assert image.format == "PNG" and min(image.size) > 50

  # A half-finished run (killed after its release: no metrics.json) and the rest.
  stamps = {key: os.stat(path / "metrics.json").st_mtime_ns for key, path in runs.items()}
  half = runs[("dp-merf", 10.0, 1)]
  release = (half / "release.npz").read_bytes()
  os.remove(half / "metrics.json")
  second = _run(capsys, _command(data, out))
  assert (second["skipped"], second["resumed"], second["new"]) == (7, 1, 0)
  for key, path in runs.items():
    if path != half:
      assert os.stat(path / "metrics.json").st_mtime_ns == stamps[key]
  # Resumed from its stored release: no new noise drawn, one release charged.
  assert (half / "metrics.json").exists() and (half / "release.npz").read_bytes() == release
  assert len(json.loads((half / "privacy.json").read_text())["releases"]) == 1

  # Other settings in the same directory are refused, naming what differs.
  assert cli.main(_command(data, out, "--num-synthetic", "48")) == 2
  assert "num_synthetic differ" in capsys.readouterr().err


def test_refuses_a_directory_it_did_not_make(tmp_path, data, capsys):
  (tmp_path / "notes.txt").write_text("mine")
  assert cli.main(_command(data, tmp_path)) == 2
  assert "not a vpntk compare directory" in capsys.readouterr().err
  assert os.listdir(tmp_path) == ["notes.txt"]


def _with(argv, flag, value=None):
  """argv with `flag` set to `value` (replaced where present), or a bare flag added."""
  if value is None:
    return argv + [flag]
  if flag in argv:
    return argv[:argv.index(flag) + 1] + [value] + argv[argv.index(flag) + 2:]
  return argv + [flag, value]


def test_grid_arguments_are_checked_before_any_run(tmp_path, data, capsys):
  for bad, message in ((("--epsilons", "1,x"), "--epsilons takes"),
                       (("--seeds", "0,0"), "distinct"),
                       (("--methods", "dp-ntk,nope"), "nope"),
                       (("--kappa", "0.5"), "no listed method has this setting"),
                       (("--config.seed=3",), "--seeds"),
                       (("--jobs", "0"), "--jobs must be")):
    assert cli.main(_with(_command(data, tmp_path / "c"), *bad)) == 2, bad
    assert message in capsys.readouterr().err, bad
  assert not (tmp_path / "c").exists()


def test_the_table_reads_each_metric_group_a_report_shows():
  metrics = {"accuracy": {"mlp": 0.7, "cnn": 0.8}, "validation_accuracy": {"mlp": 0.6},
             "inception": {"fid": 12.0, "kid_mean": 0.1, "num_samples": 10000},
             "vgg16_frechet": {"frechet_distance": 1.5e5, "num_synthetic": 10000,
                               "model": "public/vgg16"},
             "train_size": 6000}
  assert compare.metric_values(metrics) == {
      "accuracy.mlp": 0.7, "accuracy.cnn": 0.8, "validation_accuracy.mlp": 0.6,
      "inception.fid": 12.0, "inception.kid_mean": 0.1,
      "vgg16_frechet.frechet_distance": 1.5e5}
