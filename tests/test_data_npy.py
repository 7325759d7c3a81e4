"""The streamed source (vpntk_jax/data/npy.py): memory-mapped .npy files give the
release of the same arrays in memory, bad files are DataErrors, and a run works
from them. Memory at scale: benchmarks/embedding_scale.py --stream."""

import os

import numpy as np
import pytest

from vpntk_jax import arrays
from vpntk_jax import cli
from vpntk_jax import pipeline
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.data import load_dataset, make_dataset
from vpntk_jax.errors import DataError
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.stages import mean_embedding

_TINY_CONFIG = os.path.join(os.path.dirname(__file__), "tiny_config.py")


def _write(directory, n=300, shape=(28, 28, 1), test=0, seed=0):
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  images, labels = rng.integers(0, 256, (n, *shape), np.uint8), np.arange(n) % 10
  np.save(directory / "images.npy", images)
  np.save(directory / "labels.npy", labels)
  if test:
    np.save(directory / "images_test.npy", images[:test])
    np.save(directory / "labels_test.npy", labels[:test])
  return images, labels


def test_memory_mapped_source_gives_the_release_of_the_same_arrays(tmp_path):
  images, labels = _write(tmp_path / "d", shape=(8, 8, 3), test=50)
  streamed = load_dataset(f"npy:{tmp_path / 'd'}")
  assert arrays.is_memory_mapped(streamed.images) and streamed.num_classes == 10
  in_memory = make_dataset(images, labels, name="arrays")
  assert not arrays.is_memory_mapped(in_memory.images)
  # Several chunks, so the sum is assembled from chunked reads of the file.
  features = NTKFeatureMap(ntk.NTKNetwork((32, "relu", 1)), input_dim=8 * 8 * 3, chunk_size=64)
  sums = [np.asarray(mean_embedding.private_embedding_sum(features, ds, quiet=True))
          for ds in (streamed, in_memory)]
  np.testing.assert_array_equal(*sums)
  # Through the run's loading and schema fitting the images stay mapped (no copy).
  config = RunConfig(data=DataConfig(source=f"npy:{tmp_path / 'd'}"))
  private, test = pipeline.load_private_and_test(config)
  assert arrays.is_memory_mapped(private.images) and len(test) == 50
  assert load_dataset(str(tmp_path / "d")).name.endswith("d:train")  # a bare dir works too


def _bad(directory, kind):
  _write(directory, n=20, shape=(4, 4))
  images = directory / "images.npy"
  if kind == "float":
    np.save(images, np.zeros((20, 4, 4), np.float32))
  elif kind == "fortran":
    np.save(images, np.asfortranarray(np.zeros((20, 4, 4, 3), np.uint8)))
  elif kind == "npz":
    with open(images, "wb") as f:
      np.savez(f, x=np.zeros((20, 4, 4), np.uint8))
  elif kind == "truncated":
    images.write_bytes(images.read_bytes()[:-100])
  elif kind == "mismatch":
    np.save(directory / "labels.npy", np.zeros(19, np.int64))
  elif kind == "float_labels":
    np.save(directory / "labels.npy", np.zeros(20, np.float32))
  elif kind == "no_labels":
    os.remove(directory / "labels.npy")


@pytest.mark.parametrize("kind, match", [
    ("float", "must be uint8.*float32"),
    ("fortran", "Fortran order"),
    ("npz", r"not a \.npy file \(it is a zip"),
    ("truncated", "cannot memory-map"),
    ("mismatch", r"shape \(20,\) to match 20 images, got \(19,\)"),
    ("float_labels", "labels must be integers"),
    ("no_labels", "expected images.npy and labels.npy"),
])
def test_bad_files_are_data_errors(tmp_path, kind, match):
  _bad(tmp_path / "d", kind)
  with pytest.raises(DataError, match=match):
    load_dataset(f"npy:{tmp_path / 'd'}")


def test_missing_split_and_directory(tmp_path):
  _write(tmp_path / "d", n=20)
  with pytest.raises(DataError, match="no 'test' split"):
    load_dataset(f"npy:{tmp_path / 'd'}", "test")
  np.save(tmp_path / "d" / "images_test.npy", np.zeros((20, 28, 28), np.uint8))
  with pytest.raises(DataError, match="expected images.npy and labels.npy"):
    load_dataset(f"npy:{tmp_path / 'd'}", "test")  # images_test.npy never pairs labels.npy
  with pytest.raises(DataError, match="npy directory not found"):
    load_dataset(f"npy:{tmp_path / 'absent'}")


def test_a_mapped_private_set_is_not_resized_into_memory(tmp_path):
  _write(tmp_path / "d", n=20, shape=(8, 8, 1), test=10)
  config = RunConfig(data=DataConfig(source=f"npy:{tmp_path / 'd'}", image_size=16))
  with pytest.raises(DataError, match="memory-mapped images are 8x8x1.*16x16x1"):
    pipeline.load_private_and_test(config)


def _args(data, out, *extra):
  return ["synthesize", "--data", data, "--out", str(out), "--steps", "2", "--batch-size", "20",
          "--checkpoint-every", "2", "--num-synthetic", "100",
          "--skip-evaluation", "--noise-seed", "7",
          "--config", _TINY_CONFIG, "--quiet", *extra]


def test_a_run_from_the_streamed_source(tmp_path, capsys):
  _write(tmp_path / "d", n=300, test=100)
  assert cli.main(_args(f"npy:{tmp_path / 'd'}", tmp_path / "run")) == 0
  with np.load(tmp_path / "run" / "synthetic.npz") as s:
    assert s["images"].shape == (100, 28, 28, 1)
  _bad(tmp_path / "bad", "float")
  assert cli.main(_args(f"npy:{tmp_path / 'bad'}", tmp_path / "bad_run")) == 2
  assert "must be uint8" in capsys.readouterr().err and not (tmp_path / "bad_run").exists()
