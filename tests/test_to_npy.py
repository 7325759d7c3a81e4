"""`vpntk to-npy`: a source written as an npy source batch by batch (tfds mocked
offline), read back memory-mapped; bad input changes nothing."""

import os

import numpy as np
import pytest

from vpntk_jax import arrays, cli
from vpntk_jax.data import load_dataset
from vpntk_jax.data import npy


def test_a_tfds_split_is_written_batch_by_batch_and_reads_back(tmp_path, monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  from vpntk_jax.data import tfds_source
  monkeypatch.setattr(tfds_source, "_BATCH", 4)  # several batches (and the count pass)
  out = tmp_path / "celeba"
  with tfds.testing.mock_data(num_examples=10):
    whole = load_dataset("tfds:celeb_a", "train")
    assert cli.main(["to-npy", "tfds:celeb_a", "--out", str(out), "--image-size", "16",
                     "--splits", "train,test"]) == 0
  train = load_dataset(f"npy:{out}", "train")
  assert arrays.is_memory_mapped(train.images) and train.images.shape == (10, 16, 16, 3)
  assert train.class_names == ("not Male", "Male")
  np.testing.assert_array_equal(train.labels, whole.labels)
  from vpntk_jax.data import resize_images
  np.testing.assert_array_equal(train.images, resize_images(whole.images, 16))
  assert load_dataset(f"npy:{out}", "test").images.shape == (10, 16, 16, 3)
  assert sorted(os.listdir(tmp_path)) == ["celeba"]  # no staging directory left


def test_a_source_without_a_test_split_writes_train_only(tmp_path, capsys):
  rng = np.random.default_rng(0)
  x, y = rng.integers(0, 256, (9, 8, 8), np.uint8), np.arange(9) % 3
  np.savez(tmp_path / "d.npz", x=x, y=y)
  assert cli.main(["to-npy", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o")]) == 0
  assert "no test split" in capsys.readouterr().err
  back = load_dataset(f"npy:{tmp_path / 'o'}")
  np.testing.assert_array_equal(back.images[..., 0], x)
  np.testing.assert_array_equal(back.labels, y)


def test_bad_output_or_input_exits_2_and_keeps_what_was_there(tmp_path, capsys):
  np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.arange(4) % 2)
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "mine.txt").write_text("keep")
  assert cli.main(["to-npy", str(tmp_path / "d.npz"), "--out", str(taken)]) == 2
  assert "not an empty directory" in capsys.readouterr().err
  assert os.listdir(taken) == ["mine.txt"] and (taken / "mine.txt").read_text() == "keep"
  assert cli.main(["to-npy", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o"),
                   "--splits", "train,test,extra"]) == 2
  assert "TRAIN,TEST" in capsys.readouterr().err
  assert cli.main(["to-npy", str(tmp_path / "d.npz"), "--out", str(tmp_path / "o"),
                   "--splits", "train,test"]) == 2  # asked for a test split it lacks
  assert sorted(os.listdir(tmp_path)) == ["d.npz", "taken"]


def test_a_failure_midway_leaves_no_partial_source(tmp_path):
  def batches():
    yield np.zeros((3, 8, 8, 1), np.uint8), np.zeros(3)
    raise KeyboardInterrupt("killed")
  with pytest.raises(KeyboardInterrupt):
    npy.write_npy_dir(tmp_path / "o", {"train": (6, batches())})
  assert os.listdir(tmp_path) == []
