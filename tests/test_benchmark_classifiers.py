"""DPImageBench's evaluation networks (ResNet, WideResNet, ResNeXt) in Flax and its
recipe: sizes as its PyTorch modules', the epoch selected on validation images, and
the names in --classifiers (shallow networks here: the real ones train on a GPU).
experiments/dpimagebench_nets_check.py compares logits with the PyTorch modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpntk_jax.evaluation import benchmark_classifiers, evaluate_synthetic
from vpntk_jax.models import benchmark_nets

# Parameters of DPImageBench's modules as its evaluator builds them for 1 x 28 x 28
# images and 10 classes, counted in PyTorch 2.1.0 (sum of p.numel()).
TORCH_PARAMETERS = {"resnet": 1_730_426, "wrn": 8_948_922, "resnext": 34_425_546}


@pytest.mark.parametrize("name", sorted(TORCH_PARAMETERS))
def test_full_size_networks_have_the_pytorch_modules_parameter_counts(name):
  net = benchmark_nets.NETWORKS[name](num_classes=10)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))))
  count = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(shapes["params"]))
  assert count == TORCH_PARAMETERS[name]
  logits = jax.eval_shape(lambda: net.apply(
      jax.tree_util.tree_map(jnp.zeros_like, shapes), jnp.zeros((3, 28, 28, 1))))
  assert logits.shape == (3, 10)


def _data():
  rng = np.random.default_rng(0)
  # Two classes told apart by brightness: learnable in an epoch or two.
  labels = np.arange(96) % 2
  images = (rng.integers(0, 60, (96, 8, 8, 1)) + 150 * labels[:, None, None, None])
  return images.astype(np.uint8), labels


def test_the_epoch_is_selected_on_the_validation_rows():
  images, labels = _data()
  x_eval = np.concatenate([images[:20], images[20:36]])  # 20 "test" rows, 16 validation
  validation_labels = labels[20:36]
  net = benchmark_nets.ResNet(num_classes=2, depth=8)
  predictions, info = benchmark_classifiers.fit_select_predict(
      "resnet", images[36:], labels[36:], x_eval, num_classes=2, seed=0,
      validation_labels=validation_labels, num_test=20, epochs=2, model=net)
  assert predictions.shape == (36,) and info["selected_on"] == "validation"
  assert 1 <= info["selected_epoch"] <= 2
  # The reported epoch's predictions are the ones scored on the validation rows.
  assert info["selection_accuracy"] == pytest.approx(
      np.mean(predictions[20:] == validation_labels))
  _, held_out = benchmark_classifiers.fit_select_predict(
      "resnet", images[36:], labels[36:], x_eval, num_classes=2, seed=0, epochs=1, model=net)
  assert held_out["selected_on"] == "held-out synthetic"


def test_the_names_run_through_the_evaluation_protocol(monkeypatch):
  monkeypatch.setitem(benchmark_nets.NETWORKS, "wrn",
                      functools.partial(benchmark_nets.WideResNet, depth=10, widen_factor=1))
  monkeypatch.setattr(benchmark_classifiers, "EPOCHS", 1)
  images, labels = _data()
  result = evaluate_synthetic(images[:60], labels[:60], images[60:80], labels[60:80],
                              num_classes=2, classifiers=("wrn",), train_size=60,
                              validation=(images[80:], labels[80:]), progress=False)
  assert set(result["accuracy"]) == set(result["validation_accuracy"]) == {"wrn"}
  assert result["selected_epoch"]["wrn"]["selected_on"] == "validation"
  assert result["validation_accuracy"]["wrn"] == result["selected_epoch"]["wrn"][
      "selection_accuracy"]
  assert "DPImageBench's wrn" in result["protocol"]
