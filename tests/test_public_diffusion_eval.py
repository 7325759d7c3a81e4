"""experiments/public_diffusion_eval.py at tiny size: a training's checkpoint read without
touching it, sampled, scored by a pool classifier, with a grid and a JSON record."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import public_diffusion_eval
from vpntk_jax.data import FASHION_MNIST_CLASSES


@pytest.fixture(scope="module")
def pool(digits, tmp_path_factory):
  """sklearn's digits under FashionMNIST's class names (a 10-class pool at 28x28), a
  classifier trained on it for one epoch and a tiny UNet's training checkpoint."""
  from vpntk_jax import public
  import optax
  from vpntk_jax.blocks import DataConfig, PretrainConfig
  from vpntk_jax.data import resize_images
  from vpntk_jax.models import unet
  from vpntk_jax.training.checkpoints import Checkpointer
  from vpntk_jax.training.samplers import TrainState
  root = tmp_path_factory.mktemp("eval")
  train_x, train_y, test_x, test_y = digits
  path = root / "pool.npz"
  np.savez(path, x=resize_images(train_x[:300], 28), y=train_y[:300],
           x_test=resize_images(test_x[:200], 28), y_test=test_y[:200],
           class_names=np.asarray(FASHION_MNIST_CLASSES))
  config = PretrainConfig(data=DataConfig(source=str(path)), extractor_epochs=1,
                          extractor_widths=(8, 16), extractor_hidden=16, generator=False)
  public.pretrain(config, str(root / "classifier"), quiet=True)
  # A checkpoint as diffusion.train.pretrain_edm saves it at step 2 (random weights).
  params = unet.init_params(unet.UNet(unet.unet_config("tiny", (28, 28, 1), 10)),
                            jax.random.key(0))
  ema = jax.tree.map(lambda x: x + 0.01, params)
  checkpoints = Checkpointer(str(root / "run.partial" / "pretrain_checkpoints"), every=1,
                             max_to_keep=1)
  checkpoints.save(TrainState(step=np.asarray(2, np.int32), params=params, model_state=ema,
                              opt_state=optax.adam(1e-3).init(params)), force=True)
  checkpoints.close()
  return root


def _listing(root):
  return sorted((os.path.relpath(os.path.join(d, f), root), os.stat(os.path.join(d, f)).st_mtime_ns)
                for d, _, files in os.walk(root) for f in files)


def test_eval_scores_a_training_checkpoint_and_leaves_it_as_it_was(pool):
  run = pool / "run.partial"
  before = _listing(run)
  out = pool / "results" / "eval.json"
  out.parent.mkdir()
  record = public_diffusion_eval.main([
      "--model", str(run), "--classifier", str(pool / "classifier"), "--unet-size", "tiny",
      "--per-class", "3", "--steps", "2", "--batch", "16", "--json", str(out)])
  assert _listing(run) == before
  assert json.loads(out.read_text()) == {"run.partial_step2": json.loads(json.dumps(record))}
  assert record["checkpoint_step"] == 2 and record["size"] == "tiny"
  names = list(FASHION_MNIST_CLASSES)
  assert list(record["per_class"]) == names
  for name, counts in record["predicted_counts"].items():
    assert sum(counts) == 3
    assert record["per_class"][name]["rendered"] == pytest.approx(counts[names.index(name)] / 3)
    assert 0.0 <= record["per_class"][name]["real_test_accuracy"] <= 1.0
  rendered = [record["per_class"][n]["rendered"] for n in names]
  assert record["fashion_mnist"]["mean"] == pytest.approx(np.mean(rendered))
  assert record["fashion_mnist"]["worst"] == min(rendered)
  assert record["fashion_mnist"]["worst_class"] in names
  assert record["rendered_mean"] == pytest.approx(np.mean(rendered))
  grid = pool / "results" / "public_diffusion_eval_run.partial_step2.png"
  assert record["sample_grid"] == str(grid)
  assert os.path.getsize(record["sample_grid"]) > 0


def test_eval_refuses_a_checkpoint_of_another_size(pool, capsys):
  with pytest.raises(SystemExit) as stop:
    public_diffusion_eval.main([
        "--model", str(pool / "run.partial"), "--classifier", str(pool / "classifier"),
        "--unet-size", "cpu", "--json", str(pool / "unused.json")])
  assert stop.value.code == 2
  assert "is not a cpu UNet" in capsys.readouterr().err
  assert not (pool / "unused.json").exists()


def test_a_training_checkpoint_loads_its_ema_weights(pool):
  from vpntk_jax.models import unet
  from vpntk_jax.public import diffusion_model
  model = diffusion_model.load_pretrain_checkpoint(
      str(pool / "run.partial"), size="tiny", image_shape=(28, 28, 1),
      class_names=list(FASHION_MNIST_CLASSES))
  params = unet.init_params(model.model, jax.random.key(0))
  jax.tree.map(lambda got, p: np.testing.assert_allclose(got, p + 0.01, rtol=1e-6, atol=1e-7),
               model.params, params)
  assert model.spec["checkpoint_step"] == 2 and model.config.num_classes == 10


def test_a_model_without_some_pool_classes_is_judged_by_the_classes_it_has():
  from types import SimpleNamespace

  from vpntk_jax.errors import ConfigError
  pool_names = ["a", "b", "c", "d"]
  classifier = SimpleNamespace(image_shape=(28, 28, 1), num_classes=4,
                               spec={"class_names": pool_names})

  def model(names):
    return SimpleNamespace(config=SimpleNamespace(image_shape=(28, 28, 1),
                                                  num_classes=len(names)),
                           spec={"class_names": names})
  names, judged_as = public_diffusion_eval.check_matching(model(["a", "c", "d"]), classifier)
  assert names == ["a", "c", "d"] and judged_as.tolist() == [0, 2, 3]
  with pytest.raises(ConfigError, match="no class"):
    public_diffusion_eval.check_matching(model(["a", "e"]), classifier)
