"""Shipped public models: copied with their sha256 list, refused when a file differs."""

import os

import pytest

from vpntk_jax import cli
from vpntk_jax.errors import ConfigError
from vpntk_jax.public import diffusion_model, shipped


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  import numpy as np
  root = tmp_path_factory.mktemp("tiny")
  rng = np.random.default_rng(0)
  np.savez(root / "pool.npz", x=rng.integers(0, 256, (40, 28, 28, 1), np.uint8),
           y=np.arange(40) % 4, class_names=np.asarray(["a", "b", "c", "d"]))
  out = root / "model"
  assert cli.main(["pretrain-diffusion", "--data", str(root / "pool.npz"), "--out", str(out),
                   "--unet-size", "tiny", "--steps", "1", "--batch-size", "4", "--quiet"]) == 0
  return str(out)


@pytest.fixture
def shipped_root(tmp_path, monkeypatch):
  monkeypatch.setattr(shipped, "SHIPPED_ROOT", str(tmp_path / "public_models"))
  return tmp_path / "public_models"


def test_a_shipped_model_loads_by_name_and_its_files_are_listed(tiny_model, shipped_root):
  path = shipped.ship(tiny_model, "mine")
  assert shipped.names() == ["mine"]
  listed = open(os.path.join(path, shipped.SUMS)).read().splitlines()
  assert any(line.endswith("  diffusion.json") for line in listed)
  model = diffusion_model.load_diffusion_model("shipped:mine")
  assert model.spec["class_names"] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("damage", ["change", "remove", "add"])
def test_a_shipped_model_whose_files_differ_from_its_list_is_refused(tiny_model, shipped_root,
                                                                     damage):
  path = shipped.ship(tiny_model, "mine")
  spec = os.path.join(path, diffusion_model.DIFFUSION_JSON)
  if damage == "change":
    with open(spec, "a") as f:
      f.write(" ")
  elif damage == "remove":
    os.remove(spec)
  else:
    open(os.path.join(path, "extra.bin"), "wb").close()
  with pytest.raises(ConfigError, match="does not match its SHA256SUMS"):
    diffusion_model.load_diffusion_model("shipped:mine")


def test_an_unknown_shipped_name_lists_the_shipped_ones(tiny_model, shipped_root):
  shipped.ship(tiny_model, "mine")
  with pytest.raises(ConfigError, match="no shipped model 'other'.*shipped:mine"):
    diffusion_model.load_diffusion_model("shipped:other")


@pytest.mark.skipif(shipped.POOL_MODEL not in shipped.names(),
                    reason="the package ships no pool model")
def test_the_package_pool_model_matches_its_sha256_list():
  model = diffusion_model.load_diffusion_model(f"shipped:{shipped.POOL_MODEL}")
  assert tuple(model.config.image_shape) == (28, 28, 1) and model.config.num_classes == 30
