"""Tests for vpntk_jax.data: IDX, npz, image folders, TFDS (mocked) and validation."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vpntk_jax.data import (FASHION_MNIST_CLASSES, ImageDataset, check_images_and_labels,
                            load_dataset, read_idx)
from vpntk_jax.data import loader as loader_mod
from vpntk_jax.errors import DataError

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(arr: np.ndarray) -> bytes:
  """Encodes a uint8 array as IDX (big-endian header, type 0x08)."""
  header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in arr.shape)
  return header + arr.astype(np.uint8).tobytes()


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
  data = _idx_bytes(arr)
  path.write_bytes(gzip.compress(data) if gz else data)
  return path


def _make_mnist_dir(directory: Path, n: int = 12, gz: bool = True, split: str = "train",
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 5, 4), dtype=np.uint8)
  labels = (np.arange(n) % 3).astype(np.uint8)
  prefix = "train" if split == "train" else "t10k"
  ext = ".gz" if gz else ""
  directory.mkdir(parents=True, exist_ok=True)
  _write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
  _write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
  return images, labels


# --- real FashionMNIST -------------------------------------------------------

@pytest.mark.skipif(not (FMNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_default_location():
  start = time.perf_counter()
  train = load_dataset("fashion_mnist")
  # Vectorised parsing: ~0.5 s here; a per-pixel Python loop would take minutes.
  assert time.perf_counter() - start < 5.0
  assert train.images.shape == (60000, 28, 28, 1)
  assert train.images.dtype == np.uint8 and train.images.flags.c_contiguous
  assert train.labels.dtype == np.int32 and train.labels.shape == (60000,)
  assert train.num_classes == 10 and train.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(train.class_counts(), np.full(10, 6000))
  assert train.class_names == FASHION_MNIST_CLASSES and train.class_names[9] == "Ankle boot"
  assert train.name == "fashion_mnist:train"
  # Real images, not a constant placeholder.
  assert train.images.max() == 255 and 50 < train.images.mean() < 100
  test = load_dataset("fashion_mnist", "test")
  assert test.images.shape == (10000, 28, 28, 1) and test.num_classes == 10
  np.testing.assert_array_equal(test.class_counts(), np.full(10, 1000))


# --- IDX ---------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
  images, labels = _make_mnist_dir(tmp_path, gz=gz)
  ds = load_dataset("fashion_mnist", data_dir=str(tmp_path))
  np.testing.assert_array_equal(ds.images[..., 0], images)
  np.testing.assert_array_equal(ds.labels, labels)
  assert ds.images.shape == (12, 5, 4, 1) and ds.labels.dtype == np.int32
  assert ds.num_classes == 10 and ds.class_names == FASHION_MNIST_CLASSES


def test_idx_source_forms_and_splits(tmp_path):
  train_images, _ = _make_mnist_dir(tmp_path, n=6, split="train", seed=1)
  test_images, test_labels = _make_mnist_dir(tmp_path, n=4, gz=False, split="test", seed=2)
  via_prefix = load_dataset(f"idx:{tmp_path}", "test")
  via_dir = load_dataset(str(tmp_path), "test")
  for ds in (via_prefix, via_dir):
    np.testing.assert_array_equal(ds.images[..., 0], test_images)
    np.testing.assert_array_equal(ds.labels, test_labels)
    assert ds.num_classes == 3 and ds.class_names is None  # max label + 1
  np.testing.assert_array_equal(load_dataset(f"idx:{tmp_path}").images[..., 0], train_images)
  with pytest.raises(DataError, match="'train' and 'test'"):
    load_dataset(f"idx:{tmp_path}", "validation")


def test_idx_arbitrary_pair_names(tmp_path):
  images = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  _write_idx(tmp_path / "faces-idx3-ubyte", images, gz=False)
  _write_idx(tmp_path / "faces-idx1-ubyte", np.array([0, 1], np.uint8), gz=True)
  ds = load_dataset(f"idx:{tmp_path}")
  np.testing.assert_array_equal(ds.images[..., 0], images)
  assert read_idx(tmp_path / "faces-idx1-ubyte").tolist() == [0, 1]


def test_idx_truncated_file(tmp_path):
  _make_mnist_dir(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(DataError, match="truncated") as e:
    load_dataset("fashion_mnist", data_dir=str(tmp_path))
  msg = str(e.value)
  assert str(path) in msg and f"need {12 * 5 * 4} payload bytes, found {12 * 5 * 4 - 7}" in msg


def test_idx_truncated_gzip(tmp_path):
  _make_mnist_dir(tmp_path, gz=True)
  path = tmp_path / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:15])
  with pytest.raises(DataError, match="gzip") as e:
    load_dataset("fashion_mnist", data_dir=str(tmp_path))
  assert str(path) in str(e.value)


def test_idx_bad_magic(tmp_path):
  _make_mnist_dir(tmp_path, gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
  with pytest.raises(DataError, match="bad magic number 0x12340803"):
    load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_idx_images_and_labels_swapped_kind(tmp_path):
  _make_mnist_dir(tmp_path, gz=False)
  labels = tmp_path / "train-labels-idx1-ubyte"
  images = tmp_path / "train-images-idx3-ubyte"
  labels.write_bytes(images.read_bytes())
  with pytest.raises(DataError, match="does not hold labels"):
    load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_idx_count_mismatch(tmp_path):
  _make_mnist_dir(tmp_path, n=12, gz=False)
  _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8), gz=False)
  with pytest.raises(DataError, match="12 images but .* has 11 labels"):
    load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_missing_data_dir_lists_searched_dirs(tmp_path):
  with pytest.raises(DataError) as e:
    load_dataset("fashion_mnist", data_dir=str(tmp_path / "nowhere"))
  msg = str(e.value)
  assert str(tmp_path / "nowhere") in msg and str(tmp_path / "nowhere" / "fashion_mnist") in msg
  assert "apt-get install dataset-fashion-mnist" in msg and "tfds:fashion_mnist" in msg
  assert "--data-dir" in msg


def test_missing_default_dirs_listed(tmp_path, monkeypatch):
  monkeypatch.setitem(loader_mod.SYSTEM_DIRS, "fashion_mnist", (str(tmp_path / "sys"),))
  monkeypatch.setattr(loader_mod, "USER_DATA_ROOT", str(tmp_path / "home"))
  with pytest.raises(DataError) as e:
    load_dataset("fashion_mnist", "test")
  msg = str(e.value)
  assert str(tmp_path / "sys") in msg and str(tmp_path / "home" / "fashion_mnist") in msg
  # The user directory is searched after the system one.
  _make_mnist_dir(tmp_path / "home" / "fashion_mnist", n=3, split="test")
  assert len(load_dataset("fashion_mnist", "test")) == 3


def test_mnist_digit_class_names(tmp_path):
  _make_mnist_dir(tmp_path / "mnist")
  ds = load_dataset("mnist", data_dir=str(tmp_path))  # data root holding mnist/
  assert ds.class_names == tuple("0123456789") and ds.name == "mnist:train"


# --- npz ---------------------------------------------------------------------

def test_npz_good(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  labels = np.array([0, 1, 1, 0, 3], np.int64)
  path = tmp_path / "d.npz"
  np.savez(path, images=images, labels=labels)
  ds = load_dataset(str(path))
  np.testing.assert_array_equal(ds.images, images)
  assert ds.labels.dtype == np.int32 and ds.labels.tolist() == labels.tolist()
  assert ds.num_classes == 4 and ds.image_shape == (8, 8, 3)
  np.testing.assert_array_equal(ds.class_counts(), [2, 2, 0, 1])  # empty class is fine
  assert load_dataset(str(path), num_classes=6).num_classes == 6
  with pytest.raises(DataError, match="no 'test' split"):
    load_dataset(str(path), "test")


def test_npz_keras_style_keys_and_float_images(tmp_path):
  x = np.random.default_rng(1).random((4, 6, 6))
  x[0, 0, 0], x[0, 0, 1] = 0.0, 1.0
  path = tmp_path / "k.npz"
  np.savez(path, x_train=x, y_train=np.array([0, 1, 2, 1]),
           x_test=x[:2], y_test=np.array([2, 2]))
  ds = load_dataset(str(path))
  assert ds.images.shape == (4, 6, 6, 1) and ds.images.dtype == np.uint8
  np.testing.assert_array_equal(ds.images[..., 0], np.round(x * 255).astype(np.uint8))
  assert ds.images[0, 0, 0, 0] == 0 and ds.images[0, 0, 1, 0] == 255
  assert load_dataset(str(path), "test").labels.tolist() == [2, 2]


def test_npz_nan_pixels(tmp_path):
  x = np.zeros((3, 4, 4), np.float32)
  x[1, 2, 3] = np.nan
  x[2, 0, 0] = np.inf
  path = tmp_path / "nan.npz"
  np.savez(path, x=x, y=np.zeros(3, np.int32))
  with pytest.raises(DataError, match="2 pixel values are NaN or infinite"):
    load_dataset(str(path))


def test_npz_labels_out_of_range(tmp_path):
  path = tmp_path / "bad.npz"
  np.savez(path, images=np.zeros((4, 3, 3), np.uint8), labels=np.array([0, 5, -1, 2]))
  with pytest.raises(DataError, match=r"\[0, 3\).*-1, 5"):
    load_dataset(str(path), num_classes=3)


def test_npz_missing_keys_and_file(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, pixels=np.zeros((2, 3, 3), np.uint8))
  with pytest.raises(DataError, match="'images' .*found \\['pixels'\\]"):
    load_dataset(str(path))
  with pytest.raises(DataError, match="not found"):
    load_dataset(str(tmp_path / "absent.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(DataError, match="junk.npz"):
    load_dataset(str(tmp_path / "junk.npz"))


# --- check_images_and_labels ---------------------------------------------------

def test_check_normalises_and_infers_classes():
  imgs, labs, k = check_images_and_labels(np.full((2, 3, 3), 0.5), [1, 4])
  assert imgs.shape == (2, 3, 3, 1) and imgs.dtype == np.uint8 and imgs.flags.c_contiguous
  assert int(imgs[0, 0, 0, 0]) == 128 and labs.dtype == np.int32 and k == 5
  rgb = np.zeros((1, 2, 2, 3), np.uint8)[:, ::-1]  # a non-contiguous view
  assert check_images_and_labels(rgb, [0], 2)[0].flags.c_contiguous


@pytest.mark.parametrize("images, labels, kwargs, match", [
    (np.full((2, 3, 3), 1.5), [0, 1], {}, r"\[0, 1\]"),
    (np.zeros((2, 3)), [0, 1], {}, "NHW or NHWC"),
    (np.zeros((2, 3, 3, 2), np.uint8), [0, 1], {}, "1 or 3 channels"),
    (np.zeros((0, 3, 3), np.uint8), [], {}, "empty"),
    (np.zeros((2, 3, 3), np.uint8), [0.0, 1.0], {}, "labels must be integers"),
    (np.zeros((2, 3, 3), np.uint8), [0, 1, 1], {}, r"shape \(2,\)"),
    (np.zeros((2, 3, 3), np.uint8), [0, 2], {"num_classes": 2}, "values 2"),
    (np.zeros((2, 3, 3), np.uint8), [0, 1], {"num_classes": 0}, "positive integer"),
    (np.full((1, 2, 2), 300, np.int64), [0], {}, r"\[0, 255\]"),
])
def test_check_rejects(images, labels, kwargs, match):
  with pytest.raises(DataError, match=match) as e:
    check_images_and_labels(images, labels, name="mine", **kwargs)
  assert str(e.value).startswith("mine:")
  assert isinstance(e.value, ValueError)


def test_image_dataset_checks_structure():
  with pytest.raises(DataError, match="uint8 NHWC"):
    ImageDataset(np.zeros((2, 3, 3)), np.zeros(2, np.int32), 2, "x")
  with pytest.raises(DataError, match="class names"):
    ImageDataset(np.zeros((2, 3, 3, 1), np.uint8), np.zeros(2, np.int32), 2, "x", ("a",))


# --- image folders -------------------------------------------------------------

def _save_png(path: Path, arr: np.ndarray) -> None:
  from PIL import Image
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(arr).save(path)


def test_image_folder_grayscale(tmp_path):
  a = np.arange(12, dtype=np.uint8).reshape(3, 4)
  _save_png(tmp_path / "cats" / "1.png", a)
  _save_png(tmp_path / "cats" / "2.png", a + 1)
  _save_png(tmp_path / "dogs" / "x.png", a + 2)
  (tmp_path / "dogs" / "notes.txt").write_text("ignored")
  ds = load_dataset(str(tmp_path))
  assert ds.images.shape == (3, 3, 4, 1) and ds.images.dtype == np.uint8
  assert ds.labels.tolist() == [0, 0, 1] and ds.class_names == ("cats", "dogs")
  np.testing.assert_array_equal(ds.images[2, ..., 0], a + 2)


def test_image_folder_mixed_modes_become_rgb(tmp_path):
  _save_png(tmp_path / "a" / "g.png", np.full((2, 2), 7, np.uint8))
  _save_png(tmp_path / "b" / "c.png", np.tile(np.array([1, 2, 3], np.uint8), (2, 2, 1)))
  ds = load_dataset(str(tmp_path))
  assert ds.image_shape == (2, 2, 3)
  assert ds.images[0].reshape(-1, 3).tolist() == [[7, 7, 7]] * 4
  assert ds.images[1, 0, 0].tolist() == [1, 2, 3]


def test_image_folder_split_layout(tmp_path):
  for split, n in (("train", 2), ("test", 1)):
    for c in ("a", "b"):
      for i in range(n):
        _save_png(tmp_path / split / c / f"{i}.png", np.zeros((2, 2), np.uint8))
  assert len(load_dataset(str(tmp_path), "train")) == 4
  assert len(load_dataset(str(tmp_path), "test")) == 2


def test_image_folder_mixed_sizes(tmp_path):
  _save_png(tmp_path / "a" / "small.png", np.zeros((4, 4), np.uint8))
  _save_png(tmp_path / "b" / "big.png", np.zeros((5, 6), np.uint8))
  with pytest.raises(DataError, match="mixed sizes") as e:
    load_dataset(str(tmp_path))
  msg = str(e.value)
  assert "small.png is 4x4" in msg and "big.png is 6x5" in msg


def test_image_folder_undecodable(tmp_path):
  _save_png(tmp_path / "a" / "ok.png", np.zeros((4, 4), np.uint8))
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "broken.jpg").write_bytes(b"definitely not a jpeg")
  with pytest.raises(DataError, match="cannot decode image file .*broken.jpg"):
    load_dataset(str(tmp_path))


def test_image_folder_empty(tmp_path):
  (tmp_path / "a").mkdir()
  with pytest.raises(DataError, match="no images"):
    load_dataset(str(tmp_path))


def test_unknown_source_lists_forms(tmp_path):
  with pytest.raises(DataError, match="Accepted forms") as e:
    load_dataset("imagenet")
  assert "tfds:<name>" in str(e.value) and ".npz" in str(e.value)
  with pytest.raises(DataError, match="no such file"):
    load_dataset(str(tmp_path / "missing_dir"))
  with pytest.raises(DataError, match="label_attribute"):
    load_dataset("fashion_mnist", label_attribute="Male")


# --- TFDS (offline, mocked) ------------------------------------------------------

def test_import_does_not_pull_in_tensorflow():
  code = ("import sys, vpntk_jax, vpntk_jax.data; "
          "bad = [m for m in sys.modules "
          "       if m.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]; "
          "assert not bad, bad")
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60, check=False)
  assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_fashion_mnist_mock(tfds):
  with tfds.testing.mock_data(num_examples=9):
    ds = load_dataset("tfds:fashion_mnist")
  assert ds.images.shape == (9, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < 10
  assert ds.num_classes == 10 and ds.class_names == FASHION_MNIST_CLASSES
  assert ds.name == "tfds:fashion_mnist:train"


def test_tfds_celeb_a_attribute_mock(tfds):
  with tfds.testing.mock_data(num_examples=6):
    ds = load_dataset("tfds:celeb_a", label_attribute="Male")
    with pytest.raises(DataError, match="no attribute 'Beard'.*Male"):
      load_dataset("tfds:celeb_a", label_attribute="Beard")
  assert ds.images.shape == (6, 218, 178, 3) and ds.num_classes == 2
  assert set(ds.labels.tolist()) <= {0, 1} and ds.class_names == ("not Male", "Male")


@pytest.mark.parametrize("download,data_dir,try_gcs", [
    (True, None, True), (False, None, False), (True, "/prepared", False)])
def test_tfds_reads_the_public_bucket_only_when_it_may_download(tfds, monkeypatch, download,
                                                                 data_dir, try_gcs):
  seen = {}

  def record(name, **kwargs):
    seen.update(kwargs)
    raise ValueError("recorded")  # stops the load; a ValueError becomes a DataError
  monkeypatch.setattr(tfds, "load", record)
  with pytest.raises(DataError, match="recorded"):
    load_dataset("tfds:celeb_a", download=download, data_dir=data_dir)
  assert seen["try_gcs"] is try_gcs and seen["download"] is download


def test_tfds_missing_dataset_is_data_error(tfds, tmp_path):
  with pytest.raises(DataError) as e:
    load_dataset("tfds:mnist", data_dir=str(tmp_path))
  msg = str(e.value)
  assert "'mnist'" in msg and str(tmp_path) in msg and "download=True" in msg
  with pytest.raises(DataError, match="unknown TFDS dataset"):
    load_dataset("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
