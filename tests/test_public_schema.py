"""The classes of public models and converted sets (`schema.public_schema`): declared
(--classes), else the test split's, else the names stored with the data; never counted
from the train labels. A label outside them is refused with exit 2 (naming the split,
the label and the range) and a class without train images is kept. For `vpntk
pretrain-diffusion`, `vpntk to-npy` and `vpntk pretrain`, on 8x8 sets of 20 images."""

import dataclasses
import json
import os

import numpy as np
import pytest

from public_fixtures import random_npz

from vpntk_jax import cli, public
from vpntk_jax.blocks import DataConfig, PretrainConfig
from vpntk_jax.data import load_dataset
from vpntk_jax.errors import ConfigError

TEN = tuple(f"c{i}" for i in range(10))


def labelled_npz(path, train, test=None, **extra) -> str:
  """random_npz's 8x8 images with these train labels (and test labels; None: no test
  split)."""
  random_npz(path, len(train), 1 if test is None else len(test), 10)
  with np.load(path) as z:
    arrays = dict(z)
  arrays["y"] = np.asarray(train)
  if test is None:
    del arrays["x_test"], arrays["y_test"]
  else:
    arrays["y_test"] = np.asarray(test)
  np.savez(path, **arrays, **extra)
  return str(path)


@pytest.fixture
def stray_label(tmp_path):
  """A train label 10 beside a 10-class test split."""
  return labelled_npz(tmp_path / "stray.npz", [*range(10), 10], range(10))


@pytest.fixture
def no_class_9(tmp_path):
  """Class 9 absent from the train split, present in the test split."""
  return labelled_npz(tmp_path / "no9.npz", np.arange(18) % 9, range(10))


def refused(capsys, split: str, label: int, classes: int) -> str:
  err = capsys.readouterr().err
  assert f"the {split} split has label {label}, outside the valid range [0, {classes})" in err
  assert "Traceback" not in err
  return err


# vpntk pretrain-diffusion


def diffusion(data, out, *extra):
  return cli.main(["pretrain-diffusion", "--data", data, "--out", str(out), "--image-size", "8",
                   "--unet-size", "tiny", "--steps", "1", "--batch-size", "4", "--quiet", *extra])


def diffusion_classes(out) -> tuple[int, list]:
  spec = json.loads((out / "diffusion.json").read_text())
  return spec["unet"]["num_classes"], spec["class_names"]


def test_pretrain_diffusion_refuses_a_train_label_past_the_test_splits_classes(
    stray_label, tmp_path, capsys):
  assert diffusion(stray_label, tmp_path / "d") == 2
  assert "stray.npz:test" in refused(capsys, "train", 10, 10)
  assert not (tmp_path / "d").exists()


def test_pretrain_diffusion_keeps_the_test_splits_class_the_train_split_lacks(no_class_9,
                                                                              tmp_path):
  assert diffusion(no_class_9, tmp_path / "d") == 0
  assert diffusion_classes(tmp_path / "d") == (10, [str(c) for c in range(10)])


def test_pretrain_diffusion_takes_declared_classes_and_refuses_undeclared_ones(tmp_path,
                                                                               capsys):
  single = labelled_npz(tmp_path / "single.npz", np.arange(18) % 9)  # no test split, no names
  assert diffusion(single, tmp_path / "d") == 2
  assert "--classes" in capsys.readouterr().err and not (tmp_path / "d").exists()
  assert diffusion(single, tmp_path / "d", "--classes", ",".join(TEN)) == 0
  assert diffusion_classes(tmp_path / "d") == (10, list(TEN))
  assert diffusion(single, tmp_path / "e", "--classes", "a,b,c,d,e,f,g,h") == 2
  refused(capsys, "train", 8, 8)


# vpntk to-npy


def to_npy(data, out, *extra):
  return cli.main(["to-npy", data, "--out", str(out), *extra])


def test_to_npy_refuses_a_train_label_past_the_test_splits_classes(stray_label, tmp_path,
                                                                    capsys):
  assert to_npy(stray_label, tmp_path / "o") == 2
  refused(capsys, "train", 10, 10)
  assert sorted(os.listdir(tmp_path)) == ["stray.npz"]  # no output, no staging directory


def test_to_npy_refuses_a_test_label_past_the_declared_classes(no_class_9, tmp_path, capsys):
  assert to_npy(no_class_9, tmp_path / "o", "--classes", "a,b,c,d,e,f,g,h,i") == 2
  refused(capsys, "test", 9, 9)
  assert sorted(os.listdir(tmp_path)) == ["no9.npz"]


def test_to_npy_writes_the_declared_classes_a_split_lacks(no_class_9, tmp_path):
  assert to_npy(no_class_9, tmp_path / "o", "--classes", ",".join(TEN)) == 0
  for split in ("train", "test"):
    back = load_dataset(f"npy:{tmp_path / 'o'}", split)
    assert back.num_classes == 10 and back.class_names == TEN


def test_to_npy_keeps_the_stored_classes_a_split_lacks(tmp_path):
  named = labelled_npz(tmp_path / "named.npz", np.arange(18) % 9, np.arange(18) % 9,
                       class_names=np.asarray(TEN))
  assert to_npy(named, tmp_path / "o") == 0
  train = load_dataset(f"npy:{tmp_path / 'o'}", "train")
  assert train.num_classes == 10 and train.class_names == TEN


# vpntk pretrain (its extractor alone: the classes are decided before the generator).
# As the two above, it refuses a set that declares no classes (no test split, no
# names, no --classes) rather than count them from its train labels.


def pretrain(data, out, *extra):
  return cli.main(["pretrain", "--extractor-only", "--data", data, "--out", str(out),
                   "--extractor-epochs", "1", "--config.extractor_widths=4,8",
                   "--config.extractor_hidden=8", "--quiet", *extra])


def test_pretrain_refuses_a_train_label_past_the_test_splits_classes(stray_label, tmp_path,
                                                                     capsys):
  assert pretrain(stray_label, tmp_path / "p") == 2
  refused(capsys, "train", 10, 10)
  assert not (tmp_path / "p").exists()


def test_pretrain_keeps_the_test_splits_class_the_train_split_lacks(no_class_9, tmp_path):
  assert pretrain(no_class_9, tmp_path / "p") == 0
  spec = json.loads((tmp_path / "p" / "public.json").read_text())
  assert spec["num_classes"] == 10


def test_pretrain_takes_declared_classes(tmp_path, capsys):
  single = labelled_npz(tmp_path / "single.npz", np.arange(18) % 9)  # no test split, no names
  assert pretrain(single, tmp_path / "p", "--classes", "a,b,c,d,e,f,g,h") == 2
  refused(capsys, "train", 8, 8)
  assert pretrain(single, tmp_path / "p", "--classes", ",".join(TEN)) == 0
  spec = json.loads((tmp_path / "p" / "public.json").read_text())
  assert spec["num_classes"] == 10 and spec["class_names"] == list(TEN)


def test_pretrain_refuses_a_set_that_declares_no_classes(tmp_path, capsys):
  single = labelled_npz(tmp_path / "single.npz", np.arange(18) % 9)  # no test split, no names
  assert pretrain(single, tmp_path / "p") == 2
  err = capsys.readouterr().err
  assert "no test split and stores no class names" in err and "--classes" in err
  assert "Traceback" not in err
  assert sorted(os.listdir(tmp_path)) == ["single.npz"]  # nothing written, no staging
  assert pretrain(single, tmp_path / "p", "--classes", ",".join(TEN[:9])) == 0
  spec = json.loads((tmp_path / "p" / "public.json").read_text())
  assert spec["num_classes"] == 9 and spec["class_names"] == list(TEN[:9])
  # Stored class names declare them too.
  named = labelled_npz(tmp_path / "named.npz", np.arange(18) % 9, class_names=np.asarray(TEN))
  assert pretrain(named, tmp_path / "q") == 0
  spec = json.loads((tmp_path / "q" / "public.json").read_text())
  assert spec["num_classes"] == 10 and spec["class_names"] == list(TEN)


def test_pretrain_in_python_refuses_a_set_that_declares_no_classes(tmp_path):
  single = labelled_npz(tmp_path / "single.npz", np.arange(18) % 9)
  config = PretrainConfig(data=DataConfig(source=single), extractor_epochs=1,
                          extractor_widths=(4, 8), extractor_hidden=8, generator=False)
  with pytest.raises(ConfigError, match="--classes"):
    public.pretrain(config, str(tmp_path / "p"), quiet=True)
  assert not (tmp_path / "p").exists()
  declared = dataclasses.replace(config, data=DataConfig(source=single, classes=TEN))
  assert public.pretrain(declared, str(tmp_path / "p"), quiet=True).spec["num_classes"] == 10
