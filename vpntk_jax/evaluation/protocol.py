"""Downstream-utility protocol: train on (synthetic) images, test on the real test set.

Every setting is fixed in advance; nothing (hyperparameters, epochs, checkpoints)
is chosen by looking at the real test set, so the reported accuracies are an honest
measurement of the released data and spend no privacy budget.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from vpntk_jax import blocks
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.evaluation import benchmark_classifiers as bench
from vpntk_jax.evaluation import classifiers as sk
from vpntk_jax.evaluation import jax_classifiers as jc
from vpntk_jax.evaluation.cnn import BATCH_SIZE, LEARNING_RATE, fit_predict_cnn
from vpntk_jax.log import Progress

CNN_VAL_FRACTION = 0.1


def balanced_subsample(labels: np.ndarray, per_class: int, *, seed: int) -> np.ndarray:
  """Returns sorted indices of up to `per_class` examples of every class present.

  A class with fewer examples contributes all of them. The choice depends only on
  `labels`, `per_class` and `seed`.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise DataError(f"labels must be 1-D, got shape {labels.shape}")
  if per_class < 0:
    raise ConfigError(f"per_class must be >= 0, got {per_class}")
  rng = np.random.default_rng(seed)
  chosen = [
    rng.permutation(np.flatnonzero(labels == label))[:per_class] for label in np.unique(labels)
  ]
  return np.sort(np.concatenate(chosen)) if chosen else np.zeros((0,), np.int64)


def _check_inputs(
  train_images: np.ndarray,
  train_labels: np.ndarray,
  test_images: np.ndarray,
  test_labels: np.ndarray,
  num_classes: int,
) -> None:
  for name, images, labels in (
    ("train", train_images, train_labels),
    ("test", test_images, test_labels),
  ):
    if images.dtype != np.uint8 or images.ndim != 4:
      raise DataError(f"{name} images must be uint8 NHWC, got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
      raise DataError(f"{name} labels must have shape ({images.shape[0]},), got {labels.shape}")
    if images.shape[0] == 0:
      raise DataError(f"no {name} images")
    if labels.min() < 0 or labels.max() >= num_classes:
      raise DataError(
        f"{name} labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
      )
  if train_images.shape[1:] != test_images.shape[1:]:
    raise DataError(
      f"train and test images differ in shape: {train_images.shape[1:]} vs {test_images.shape[1:]}"
    )


def _sklearn(name: str, kwargs: dict) -> str:
  return f"sklearn {name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


# name -> the settings it really runs with (read when described, so they follow the code).
_DESCRIPTIONS: dict[str, Callable[[int], str]] = {
  "logistic_regression": lambda _: (
    f"JAX multinomial softmax regression, L2 as sklearn's C={jc.LR_C} (sum of cross-entropies "
    f"+ ||W||^2/2C, bias unpenalised), full-batch optax L-BFGS (zoom line search) from zeros "
    f"for a fixed {jc.LR_ITERATIONS} iterations"),
  "mlp": lambda _: (
    f"JAX MLP {jc.MLP_HIDDEN} relu units, sklearn's Glorot-uniform init, adam lr "
    f"{jc.MLP_LEARNING_RATE}, batch {jc.MLP_BATCH_SIZE} (ragged tail dropped), L2 "
    f"alpha={jc.MLP_ALPHA} scaled as sklearn's, fixed {jc.MLP_EPOCHS} epochs"),
  "cnn": lambda cnn_epochs: (
    f"conv3x3(32)-pool-conv3x3(64)-pool-dense(128), adam lr {LEARNING_RATE}, batch "
    f"{BATCH_SIZE}, fixed {cnn_epochs} epochs on {1 - CNN_VAL_FRACTION:.0%} of the subsample "
    f"(the rest only reported as synthetic_val_accuracy)"),
  "sklearn-logistic_regression": lambda _: _sklearn("LogisticRegression",
                                                    sk.LOGISTIC_REGRESSION_KWARGS),
  "sklearn-mlp": lambda _: _sklearn("MLPClassifier", sk.MLP_KWARGS),
  **{name: functools.partial(lambda name, _: bench.describe(name), name)
     for name in ("resnet", "wrn", "resnext")},
}


def protocol_description(train_size: int, test_size: int, cnn_epochs: int,
                         classifiers: tuple[str, ...] = blocks.DEFAULT_CLASSIFIERS) -> str:
  """One-paragraph summary of the fixed protocol, stored next to the numbers."""
  settings = "; ".join(f"{name}: {_DESCRIPTIONS[name](cnn_epochs)}" for name in classifiers)
  return (
    f"class-balanced subsample of {train_size} training images, pixels in [0,1] (flattened "
    f"for the linear and MLP models); {settings}; accuracy on all {test_size} real test "
    f"images; nothing selected on the test set"
  )


def _flat(fit_predict: Callable, name: str) -> Callable[..., tuple[np.ndarray, dict]]:
  """A classifier on flattened pixels, in the table's calling convention."""
  return lambda x_train, y_train, x_test, *, seed, **_: (
    fit_predict(name, x_train, y_train, x_test, seed), {})


def _benchmark(name: str) -> Callable[..., tuple[np.ndarray, dict]]:
  """One of DPImageBench's networks, in the table's calling convention (its epochs are
  DPImageBench's, not cnn_epochs)."""
  return lambda x_train, y_train, x_test, *, num_classes, seed, validation_labels, num_test, \
      **_: bench.fit_select_predict(name, x_train, y_train, x_test, num_classes=num_classes,
                                    seed=seed, validation_labels=validation_labels,
                                    num_test=num_test)


# name -> (x_train, y_train, x_test, *, num_classes, seed, cnn_epochs, validation_labels,
# num_test) -> (predictions, info); x_test's rows after num_test are the validation images
# (validation_labels, None without them).
_RUNNERS: dict[str, Callable[..., tuple[np.ndarray, dict]]] = {
  "logistic_regression": _flat(jc.fit_predict, "logistic_regression"),
  "mlp": _flat(jc.fit_predict, "mlp"),
  "cnn": lambda x_train, y_train, x_test, *, num_classes, seed, cnn_epochs, **_: fit_predict_cnn(
    x_train, y_train, x_test, num_classes=num_classes, seed=seed, epochs=cnn_epochs,
    val_fraction=CNN_VAL_FRACTION),
  "sklearn-logistic_regression": _flat(sk.fit_predict, "logistic_regression"),
  "sklearn-mlp": _flat(sk.fit_predict, "mlp"),
  # DPImageBench's networks select their epoch on the validation rows of x_test.
  **{name: _benchmark(name) for name in ("resnet", "wrn", "resnext")},
}
CLASSIFIERS = tuple(_RUNNERS)
# The JAX-free config checks names against blocks.CLASSIFIERS: the two must agree.
if not CLASSIFIERS == tuple(_DESCRIPTIONS) == blocks.CLASSIFIERS:
  raise AssertionError("protocol classifiers differ from vpntk_jax.blocks.CLASSIFIERS")


def evaluate_synthetic(
  train_images: np.ndarray,
  train_labels: np.ndarray,
  test_images: np.ndarray,
  test_labels: np.ndarray,
  *,
  num_classes: int,
  classifiers: tuple[str, ...] = blocks.DEFAULT_CLASSIFIERS,
  train_size: int = 6000,
  seed: int = 0,
  cnn_epochs: int = 10,
  progress: bool = True,
  validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
  """Trains each classifier on a balanced subsample of the train set; scores it on the test set.

  Returns {"accuracy": {name: float}, "seconds": {name: float},
  "synthetic_val_accuracy": {"cnn": float} (when run), "train_size", "test_size", "protocol"}.
  `train_size` is the number actually used: floor(train_size / num_classes) per class,
  fewer where a class is short. With `validation` (real images and labels held out of
  the private data, a benchmark protocol's) each classifier is also scored on them:
  "validation_accuracy", the number to select by instead of the test accuracy.
  """
  train_images, test_images = np.asarray(train_images), np.asarray(test_images)
  train_labels = np.asarray(train_labels).astype(np.int64)
  test_labels = np.asarray(test_labels).astype(np.int64)
  _check_inputs(train_images, train_labels, test_images, test_labels, num_classes)
  num_test = test_labels.size
  if validation is not None:
    val_images, val_labels = np.asarray(validation[0]), np.asarray(validation[1]).astype(np.int64)
    _check_inputs(train_images, train_labels, val_images, val_labels, num_classes)
    # One prediction pass over both: the same fitted classifier scores each.
    test_images = np.concatenate([test_images, val_images])
  unknown = [name for name in classifiers if name not in CLASSIFIERS]
  if unknown:
    raise ConfigError(f"unknown classifiers {unknown}; expected a subset of {CLASSIFIERS}")
  if train_size < num_classes:
    raise ConfigError(f"train_size must be >= num_classes ({num_classes}), got {train_size}")
  if cnn_epochs < 1:
    raise ConfigError(f"cnn_epochs must be >= 1, got {cnn_epochs}")

  subset = balanced_subsample(train_labels, train_size // num_classes, seed=seed)
  x_train, y_train = train_images[subset], train_labels[subset]
  result = {
    "accuracy": {},
    "seconds": {},
    "synthetic_val_accuracy": {},
    "train_size": int(subset.size),
    "test_size": int(num_test),
    "protocol": protocol_description(int(subset.size), int(num_test), cnn_epochs,
                                     tuple(classifiers)),
  }
  if validation is not None:
    result["validation_accuracy"] = {}
    result["validation_size"] = int(val_labels.size)
  bar = Progress(classifiers, desc="evaluate", disable=not progress, leave=False)
  for name in bar:
    bar.set_postfix_str(name)
    start = time.perf_counter()
    predictions, info = _RUNNERS[name](
      x_train, y_train, test_images, num_classes=num_classes, seed=seed, cnn_epochs=cnn_epochs,
      validation_labels=None if validation is None else val_labels, num_test=num_test
    )
    # Predictions are host numpy arrays, so the timing includes all (asynchronous) JAX work.
    accuracy = float(np.mean(predictions[:num_test] == test_labels))
    if validation is not None:
      result["validation_accuracy"][name] = float(np.mean(predictions[num_test:] == val_labels))
    result["seconds"][name] = time.perf_counter() - start
    result["accuracy"][name] = accuracy
    if info.get("synthetic_val_accuracy") is not None:
      result["synthetic_val_accuracy"][name] = info["synthetic_val_accuracy"]
    if "selected_epoch" in info:
      result.setdefault("selected_epoch", {})[name] = info
  return result
