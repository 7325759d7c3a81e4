"""DPAgg-TI and DP-SGD-TI on tiny settings: the token bound, per-image independence, the
public diffusion model's file format, runs whose ledgers re-derive with dp-accounting,
the canary audit of the aggregate, and bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rederive import rederive_epsilon
from vpntk_jax import cli
from vpntk_jax.diffusion import inversion
from vpntk_jax.models import unet
from vpntk_jax.privacy.release import array_digest
from vpntk_jax.public import diffusion_model as public_diffusion
from vpntk_jax.stages import textual_inversion as ti

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), np.uint8)


@pytest.fixture(scope="module")
def public_model(tmp_path_factory):
  """A tiny public diffusion model with random weights, in the documented layout."""
  out = tmp_path_factory.mktemp("public") / "diffusion"
  os.makedirs(out)
  model = unet.UNet(unet.unet_config("tiny", (28, 28, 1), 3))
  params = unet.init_params(model, jax.random.key(0))
  public_diffusion.save_diffusion_model(str(out), model, params, public_data="random weights")
  return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """24 private images of 2 classes (real FashionMNIST when installed) and 20 test."""
  root = tmp_path_factory.mktemp("data")
  if os.path.exists(FMNIST):
    from vpntk_jax.data import load_dataset
    tr = load_dataset("fashion_mnist", "train")
    x, y = tr.images[:44], tr.labels[:44] % 2
  else:
    x, y = _images(44), np.arange(44) % 2
  np.savez(root / "private.npz", x=x[:24], y=y[:24], x_test=x[24:], y_test=y[24:])
  np.savez(root / "one.npz", x=x[:1], y=y[:1], x_test=x[24:], y_test=y[24:])
  return {"private": str(root / "private.npz"), "one": str(root / "one.npz"), "root": root}


def _args(method, data, out, public_model, *extra):
  # One chunk of all 24 images and one noise draw a step: the inversion's cost, not its
  # arithmetic, is what multiplicity and chunking change.
  inversion_flags = (["--ti-steps", "2", "--config.options.inversion.chunk_size=24",
                      "--config.options.inversion.multiplicity=1"]
                     if method == "dpagg-ti" else [])
  return ["synthesize", "--method", method, "--data", data["private"], "--out", str(out),
          "--diffusion-model", public_model, *inversion_flags,
          "--config.options.sampling.sample_steps=2", "--num-synthetic", "20", "--eval-train-size", "20", "--classifiers",
          "sklearn-logistic_regression", "--noise-seed", "3", "--epsilon", "1", "--quiet", *extra]


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_unit_rows_bound_holds_in_float64_for_adversarial_tokens():
  rng = np.random.default_rng(0)
  big = np.float32(3e38)
  tokens = np.concatenate([
      np.full((1, 8), big), np.full((1, 8), -big), np.full((1, 8), 1e-45, np.float32),
      np.eye(8, dtype=np.float32)[:1] * 1e-38, rng.normal(size=(200, 8)).astype(np.float32),
      (rng.normal(size=(50, 8)) * 10.0 ** rng.integers(-30, 30, (50, 1))).astype(np.float32),
      np.array([[np.nan] + [1.0] * 7, [np.inf] + [1.0] * 7, [0.0] * 8], np.float32)])
  u = np.asarray(inversion.unit_rows(jnp.asarray(tokens)), np.float64)
  norms = np.linalg.norm(u, axis=1)
  assert np.all(np.isfinite(u)) and norms.max() <= 1.0
  assert np.all(norms[-3:] == 0.0)  # NaN, inf and zero rows carry nothing
  # Every normal row keeps its direction (subnormal ones may be flushed to zero).
  assert np.all(norms[[0, 1]] > 0.99) and np.all(norms[4:-3] > 0.99)
  np.testing.assert_allclose(u[0], -u[1])


def test_token_conditioning_matches_the_label_table():
  model = unet.UNet(unet.unet_config("tiny", (28, 28, 1), 4))
  params = unet.init_params(model, jax.random.key(1))
  x, c, y = jnp.ones((3, 28, 28, 1)), jnp.zeros((3,)), jnp.array([0, 2, 4])
  by_label = unet.make_apply_fn(model)(params, x, c, y)
  by_token = unet.token_apply_fn(model)({"unet": params, "tokens": unet.label_table(params)},
                                        x, c, y)
  np.testing.assert_array_equal(np.asarray(by_label), np.asarray(by_token))


def test_each_token_depends_on_its_own_image_only(public_model):
  public = public_diffusion.load_diffusion_model(public_model)
  apply_fn, tokens = unet.token_apply_fn(public.model), public.tokens
  images = _images(6)

  def invert(x):
    return inversion.invert_images(apply_fn, public.params, tokens[-1], tokens[:-1].mean(0), x,
                                   jax.random.split(jax.random.key(0), 6), steps=3,
                                   learning_rate=0.1,
                                   multiplicity=2, chunk_size=4)
  before = invert(images)
  changed = images.copy()
  changed[1] = 255 - changed[1]  # image 1 of the first chunk
  after = invert(changed)
  assert not np.array_equal(before[1], after[1])
  for i in (0, 2, 3, 4, 5):
    np.testing.assert_array_equal(before[i], after[i])


def test_centroids_take_the_public_token_norm():
  public_tokens = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [9.0, 9.0]], np.float32)
  released = np.array([[2.0, 0.0], [0.0, 0.0]])  # class 0 points along x; class 1 is empty
  tokens = ti.centroid_tokens(released, public_tokens)
  np.testing.assert_allclose(tokens[0], [5.0, 0.0], rtol=1e-6)  # median of 5, 1, 10
  np.testing.assert_allclose(np.linalg.norm(tokens[1]), 5.0, rtol=1e-6)


def test_the_public_model_file_round_trips_and_names_what_is_wrong(public_model, tmp_path):
  public = public_diffusion.load_diffusion_model(public_model)
  assert public.tokens.shape == (4, unet.token_dim(public.config))
  spec = _read(os.path.join(public_model, "diffusion.json"))
  assert spec["format"] == "vpntk-public-diffusion/1" and spec["unet"]["num_classes"] == 3
  from vpntk_jax.errors import ConfigError
  with pytest.raises(ConfigError, match="diffusion.json missing"):
    public_diffusion.load_diffusion_model(str(tmp_path))
  # Parameters of another shape than the spec's.
  other = tmp_path / "other"
  os.makedirs(other)
  model = unet.UNet(unet.unet_config("tiny", (28, 28, 1), 5))
  public_diffusion.save_diffusion_model(str(other), model,
                                        unet.init_params(model, jax.random.key(0)))
  doc = _read(other / "diffusion.json")
  doc["unet"]["num_classes"] = 3
  (other / "diffusion.json").write_text(json.dumps(doc))
  with pytest.raises(ConfigError, match="does not match the UNet"):
    public_diffusion.load_diffusion_model(str(other))


@pytest.fixture(scope="module")
def aggregate_run(data, public_model, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "dpagg"
  assert cli.main(_args("dpagg-ti", data, out, public_model)) == 0
  return out


@pytest.mark.parametrize("extra,field", [
    (["--validation-noise-scale", "10"], "validation_noise_scale"),  # a release nothing reads
    (["--train-steps", "5"], "train.steps"),
    (["--loss", "mmd"], "loss"),
])
def test_generator_settings_dpagg_ti_does_not_read_are_refused(data, public_model, tmp_path,
                                                                capsys, extra, field):
  out = tmp_path / "run"
  assert cli.main(_args("dpagg-ti", data, out, public_model, *extra)) == 2
  err = capsys.readouterr().err
  assert f"would not read {field}" in err and not out.exists()


def test_dpagg_ti_releases_the_labelled_token_sum_once(aggregate_run):
  doc = _read(aggregate_run / "privacy.json")
  (record,) = doc["releases"]
  assert record["name"] == "labelled_mean_embedding" and record["mechanism"] == "gaussian"
  # Unit tokens, replace-one, m = 24: sensitivity 2 / 24 (plus the lattice's share).
  assert record["sensitivity"] == pytest.approx(2 / 24, rel=2e-3)
  assert rederive_epsilon(doc) == pytest.approx(1.0, rel=1e-3) and doc["within_budget"]
  with np.load(aggregate_run / "release.npz") as z:
    assert z["embedding"].shape == (8, 2) and record["sha256"] == array_digest(z["embedding"])
  with np.load(aggregate_run / "synthetic.npz") as z:
    assert z["images"].shape == (20, 28, 28, 1) and set(z["labels"]) == {0, 1}
  before = (aggregate_run / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(aggregate_run), "--resume", "--quiet"]) == 0
  assert (aggregate_run / "release.npz").read_bytes() == before  # no new noise
  assert len(_read(aggregate_run / "privacy.json")["releases"]) == 1


def test_a_subsampled_aggregate_is_one_poisson_gaussian_step(data, public_model, tmp_path):
  out = tmp_path / "sub"
  assert cli.main(_args("dpagg-ti", data, out, public_model, "--ti-sampling-rate", "0.5")) == 0
  doc = _read(out / "privacy.json")
  (record,) = doc["releases"]
  assert record["mechanism"] == "poisson_gaussian" and record["sampling_rate"] == 0.5
  assert record["dp_event"]["event"]["class_name"] == "PoissonSampledDpEvent"
  assert rederive_epsilon(doc) == pytest.approx(1.0, rel=1e-3)
  # The noise on the sum divided by the expected count 12, replace-one (2 per record).
  assert record["sensitivity"] == pytest.approx(2 / 12, rel=2e-3)


def test_given_tokens_run_the_same_release(data, public_model, tmp_path):
  tokens = np.random.default_rng(0).normal(size=(24, 8)).astype(np.float32)
  np.save(tmp_path / "tokens.npy", tokens)
  out = tmp_path / "given"
  assert cli.main(_args("dpagg-ti", data, out, public_model, "--ti-embeddings",
                        str(tmp_path / "tokens.npy"), "--noise-seed", "5")) == 0
  with np.load(out / "release.npz") as z:
    released = z["embedding"]
  # The release is the labelled sum of the unit tokens over m, plus noise of the
  # recorded std: the residual is noise-sized, the sum itself much larger.
  with np.load(data["private"]) as z:
    labels = z["y"]
  u = np.asarray(inversion.unit_rows(tokens), np.float64)
  exact = u.T @ np.eye(2)[labels] / 24
  std = _read(out / "privacy.json")["releases"][0]["noise_std"]
  residual = (released - exact) / std
  assert abs(residual.std() - 1.0) < 0.5 and abs(residual.mean()) < 0.6


def test_the_canary_audit_of_the_aggregate_stays_below_epsilon(data, public_model):
  from vpntk_jax import config as config_lib, pipeline
  config = config_lib.with_overrides(config_lib.RunConfig(), {
      "method": "dpagg-ti", "data.source": data["private"], "epsilon": 1.0,
      "options.diffusion_model": public_model, "options.inversion.steps": 2,
      "options.inversion.chunk_size": 16, "options.inversion.multiplicity": 1})
  noisy = pipeline.audit(config, num_examples=16, trials=200, seed=0)
  assert noisy["epsilon_lower_bound"] <= 1.0
  reach = noisy["reachability"]
  assert reach["reachable_share_first_world"] == reach["reachable_share_second_world"] == 1.0
  # Without noise the canary's token is plain to see: the audit has power.
  exact = pipeline.audit(config, num_examples=16, trials=200, seed=0, noise=False)
  assert exact["epsilon_lower_bound"] > 1.0


def test_dpsgd_ti_trains_the_class_tokens_with_dp_sgd(data, public_model, tmp_path):
  out = tmp_path / "dpsgd"
  assert cli.main(_args("dpsgd-ti", data, out, public_model, "--dp-steps", "2",
                        "--dp-batch-size", "8", "--noise-multiplicity", "1",
                        "--config.options.dp_sgd.checkpoint_every=1")) == 0
  doc = _read(out / "privacy.json")
  assert [r["steps"] for r in doc["releases"]] == [1, 1]
  assert rederive_epsilon(doc) == pytest.approx(1.0, rel=1e-3) and doc["within_budget"]
  with np.load(out / "synthetic.npz") as z:
    assert z["images"].shape == (20, 28, 28, 1)


@pytest.mark.parametrize("make,extra,message", [
    (lambda d: np.zeros((24, 5), np.float32), [], "expected a numeric (n, 8) array"),
    (lambda d: np.full((24, 8), np.nan, np.float32), [], "NaN or inf"),
    (lambda d: np.zeros((23, 8), np.float32), [], "has 23 rows; the private set has 24"),
    (None, ["--ti-sampling-rate", "1.5"], "sampling_rate must be in (0, 1]"),
    (None, ["--ti-sampling-rate", "0"], "sampling_rate must be in (0, 1]"),
    (None, ["--adjacency", "add_remove", "--ti-sampling-rate", "0.5"],
     "--public-num-examples"),
    (None, ["--diffusion-model", "/nonexistent"], "no public diffusion model"),
])
def test_bad_dpagg_input_exits_2_and_writes_nothing(data, public_model, tmp_path, capsys,
                                                   make, extra, message):
  if make is not None:
    np.save(tmp_path / "tokens.npy", make(data))
    extra = ["--ti-embeddings", str(tmp_path / "tokens.npy")]
  out = tmp_path / "run"
  assert cli.main(_args("dpagg-ti", data, out, public_model, *extra)) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_a_concept_set_of_one_image_is_refused(data, public_model, tmp_path, capsys):
  out = tmp_path / "run"
  args = _args("dpagg-ti", data, out, public_model)
  args[args.index(data["private"])] = data["one"]
  assert cli.main(args) == 2
  assert "one image" in capsys.readouterr().err and not out.exists()


def test_a_public_model_without_a_conditioning_table_is_refused(data, public_model, tmp_path,
                                                                capsys):
  import shutil
  bare = tmp_path / "bare"
  shutil.copytree(public_model, bare)
  model = unet.UNet(unet.unet_config("tiny", (28, 28, 1), 3))
  params = dict(unet.init_params(model, jax.random.key(0)))
  del params["label_embed"]
  shutil.rmtree(bare / "models")
  import orbax.checkpoint as ocp
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(bare / "models"), {"params": params})
  out = tmp_path / "run"
  assert cli.main(_args("dpagg-ti", data, out, str(bare))) == 2
  assert "no conditioning table" in capsys.readouterr().err and not out.exists()
