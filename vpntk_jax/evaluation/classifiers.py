"""Scikit-learn classifiers of the DP-NTK reference protocol, on flattened [0, 1] pixels."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from vpntk_jax.errors import ConfigError, DataError

SKLEARN_CLASSIFIERS = ("logistic_regression", "mlp")

# Fixed settings, never tuned on the test set. The MLP follows sklearn's defaults
# except max_iter (200 -> 500, so that it usually converges by its own training-loss
# tolerance) and early_stopping, spelled out as False: no hidden validation split.
LOGISTIC_REGRESSION_KWARGS = {"solver": "lbfgs", "max_iter": 5000}
MLP_KWARGS = {
  "hidden_layer_sizes": (100,),
  "activation": "relu",
  "solver": "adam",
  "learning_rate_init": 1e-3,
  "batch_size": "auto",  # min(200, n), the sklearn default
  "max_iter": 500,
  "early_stopping": False,
}


def to_features(images: np.ndarray) -> np.ndarray:
  """Flattens uint8 images (N, ...) into float32 rows scaled to [0, 1]."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise DataError(f"images must be uint8, got {images.dtype}")
  if images.ndim < 2:
    raise DataError(f"images must have a batch axis and pixels, got shape {images.shape}")
  return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0


def make_classifier(name: str, seed: int) -> LogisticRegression | MLPClassifier:
  """Returns an unfitted sklearn classifier with the protocol's fixed settings."""
  if name == "logistic_regression":
    return LogisticRegression(random_state=seed, **LOGISTIC_REGRESSION_KWARGS)
  if name == "mlp":
    return MLPClassifier(random_state=seed, **MLP_KWARGS)
  raise ConfigError(f"unknown sklearn classifier {name!r}; expected one of {SKLEARN_CLASSIFIERS}")


def fit_predict_rows(
  fit: Callable[[np.ndarray, np.ndarray, np.ndarray, int, int], np.ndarray],
  x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int,
) -> np.ndarray:
  """Checks and flattens uint8 images, then predicts labels of `x_test` with
  fit(features_train, class_indices, features_test, num_classes, seed) -> class indices.

  Classes are the sorted labels present in `y_train`, as sklearn numbers them.
  """
  features_train, features_test = to_features(x_train), to_features(x_test)
  if features_train.shape[1] != features_test.shape[1]:
    raise DataError(
      f"train and test images differ in size: {x_train.shape[1:]} vs {x_test.shape[1:]}"
    )
  classes, indices = np.unique(np.asarray(y_train).astype(np.int64), return_inverse=True)
  if classes.size == 0:
    raise DataError("no training examples")
  if classes.size == 1:
    # sklearn refuses single-class data; the only consistent classifier is a constant.
    return np.full(features_test.shape[0], classes[0], dtype=np.int64)
  return classes[np.asarray(fit(features_train, indices, features_test, classes.size, seed))]


def _fit_sklearn(name: str, features_train, indices, features_test, num_classes, seed):
  del num_classes  # sklearn counts the classes itself
  classifier = make_classifier(name, seed)
  with warnings.catch_warnings():
    # Not converging within the fixed budget is part of the protocol, not an error.
    warnings.simplefilter("ignore", ConvergenceWarning)
    classifier.fit(features_train, indices)
  return classifier.predict(features_test)


def fit_predict(
  name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int
) -> np.ndarray:
  """Fits classifier `name` on uint8 images `x_train` and predicts labels of `x_test`."""
  make_classifier(name, seed)  # an unknown name fails before any work
  return fit_predict_rows(functools.partial(_fit_sklearn, name), x_train, y_train, x_test, seed)
