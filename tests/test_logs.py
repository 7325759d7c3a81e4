"""The operator's view of a run: messages through one logger, a log.txt in the run
directory that reads line by line when stderr is a file, progress as plain
periodic lines off a terminal, and the CSV logs' scalars in TensorBoard event
files that TensorBoard's own reader parses."""

import re

import numpy as np
import pytest

from public_fixtures import random_npz
from vpntk_jax import cli, log
from vpntk_jax import tensorboard_events as events

STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  return random_npz(tmp_path_factory.mktemp("d") / "d.npz", 60, 30, 3)


def _run(data, out, *extra):
  return cli.main(["synthesize", "--data", data, "--out", str(out), "--steps", "4",
                   "--batch-size", "6", "--num-synthetic", "30", "--eval-train-size", "30",
                   "--classifiers", "sklearn-logistic_regression", "--config.train.log_every=1",
                   '--config.ntk_layers=[16,"relu","layernorm",3]', *extra])


def test_a_redirected_run_logs_plain_lines_to_stderr_and_log_txt(data, tmp_path, capsys,
                                                                 monkeypatch):
  monkeypatch.setattr(log, "PROGRESS_SECONDS", 0.0)  # a line at every update
  out = tmp_path / "run"
  assert _run(data, out) == 0
  err = capsys.readouterr().err  # not a terminal: no bars
  assert "\r" not in err and "train generator: 2/4" in err and "ETA" in err
  lines = (out / "log.txt").read_text().splitlines()
  assert lines and all(STAMP.match(line) for line in lines)
  text = "\n".join(lines)
  for expected in ("vpntk dp-ntk run in", "private embedding: started", "released the embedding",
                   "train generator: 4/4", "synthesize: 30/30", "evaluate: 1/1"):
    assert expected in text, expected
  # A private bar shows no counts: the private set's size is a private fact.
  assert not re.search(r"private embedding: \d", text)
  # --quiet silences stderr, not the run's own log.
  quiet = tmp_path / "quiet"
  assert _run(data, quiet, "--quiet") == 0
  assert "train generator" not in capsys.readouterr().err
  assert "train generator: 4/4" in (quiet / "log.txt").read_text()


def test_scalars_are_written_for_tensorboard_and_its_reader_parses_them(data, tmp_path):
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  out = tmp_path / "run"
  assert _run(data, out, "--quiet") == 0
  acc = event_accumulator.EventAccumulator(str(out / "tensorboard"))
  acc.Reload()
  assert set(acc.Tags()["scalars"]) == {"train_log/loss", "train_log/seconds"}
  rows = [line.split(",") for line in (out / "train_log.csv").read_text().splitlines()[1:]]
  logged = acc.Scalars("train_log/loss")
  assert [e.step for e in logged] == [int(r[0]) for r in rows] == [1, 2, 3, 4]
  np.testing.assert_allclose([e.value for e in logged], [float(r[1]) for r in rows], rtol=1e-6)


def test_event_records_are_framed_with_masked_crc32c():
  assert events.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
  record = events.record_bytes(b"payload")
  assert len(record) == 8 + 4 + 7 + 4 and record[12:19] == b"payload"
