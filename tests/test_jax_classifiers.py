"""The JAX logistic regression and MLP against scikit-learn's, on sklearn's 8x8 digits."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from vpntk_jax.config import RunConfig
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.evaluation import classifiers as sk
from vpntk_jax.evaluation import balanced_subsample, evaluate_synthetic
from vpntk_jax.evaluation import jax_classifiers as jc


def _sklearn_objective(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
  """sklearn's C=1 objective in float64: summed cross-entropy + ||W||^2 / 2."""
  z = x.astype(np.float64) @ w + b
  z -= z.max(axis=1, keepdims=True)
  log_p = z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))
  return float(-log_p.sum() + 0.5 * np.sum(w.astype(np.float64) ** 2))


def test_logistic_regression_reaches_sklearns_optimum(digits):
  train_x, train_y, test_x, _ = digits
  x, x_test = sk.to_features(train_x), sk.to_features(test_x)
  reference = LogisticRegression(**sk.LOGISTIC_REGRESSION_KWARGS).fit(x, train_y)
  w, b = (np.asarray(a) for a in jc.fit_logistic_regression(x, train_y, num_classes=10))
  optimum = _sklearn_objective(reference.coef_.T, reference.intercept_, x, train_y)
  # A wrong penalty scale (per-example instead of summed) misses this by far.
  assert abs(_sklearn_objective(w, b, x, train_y) - optimum) <= 1e-3 * optimum
  agree = np.mean(np.argmax(x_test @ w + b, axis=1) == reference.predict(x_test))
  assert agree >= 0.97, agree


def test_mlp_learns_and_is_deterministic_in_seed(digits):
  train_x, train_y, test_x, test_y = digits
  pred = jc.fit_predict("mlp", train_x, train_y, test_x, seed=3)
  assert np.mean(pred == test_y) > 0.9  # chance is 0.1
  np.testing.assert_array_equal(pred, jc.fit_predict("mlp", train_x, train_y, test_x, seed=3))
  # The same compiled program as fit_predict's; another seed, another init and order.
  x, y = sk.to_features(train_x), train_y.astype(np.int32)
  _, losses_3 = jc.fit_mlp(x, y, jax.random.key(3), num_classes=10)
  _, losses_4 = jc.fit_mlp(x, y, jax.random.key(4), num_classes=10)
  assert losses_3.shape == (jc.MLP_EPOCHS,) and losses_3[-1] < 0.1 * losses_3[0]
  assert not np.array_equal(np.asarray(losses_3), np.asarray(losses_4))


@pytest.mark.parametrize("name", jc.JAX_CLASSIFIERS)
def test_labels_keep_their_values_and_one_class_is_a_constant(digits, name):
  train_x, train_y, test_x, _ = digits
  some = np.isin(train_y, [2, 5, 7])
  pred = jc.fit_predict(name, train_x[some], train_y[some], test_x, seed=0)
  assert set(np.unique(pred)) <= {2, 5, 7} and pred.dtype == np.int64
  only = train_y == 4
  np.testing.assert_array_equal(jc.fit_predict(name, train_x[only], train_y[only], test_x, 0),
                                np.full(len(test_x), 4))
  with pytest.raises(DataError):
    jc.fit_predict(name, train_x.astype(np.float32), train_y, test_x, seed=0)


def test_sklearn_names_run_sklearn(digits):
  train_x, train_y, test_x, test_y = digits
  result = evaluate_synthetic(train_x, train_y, test_x, test_y, num_classes=10, train_size=1000,
                              classifiers=("sklearn-logistic_regression",), progress=False)
  subset = balanced_subsample(train_y, 100, seed=0)  # the protocol's, for seed 0
  reference = LogisticRegression(random_state=0, **sk.LOGISTIC_REGRESSION_KWARGS)
  reference.fit(sk.to_features(train_x[subset]), train_y[subset])
  expected = np.mean(reference.predict(sk.to_features(test_x)) == test_y)
  assert result["accuracy"] == {"sklearn-logistic_regression": expected}
  assert "sklearn LogisticRegression(" in result["protocol"]
  assert "JAX" not in result["protocol"]


def test_unknown_names_fail_clearly(digits):
  train_x, train_y, test_x, _ = digits
  with pytest.raises(ConfigError, match="svm"):
    jc.fit_predict("svm", train_x, train_y, test_x, seed=0)
  with pytest.raises(ConfigError, match="sklearn-svm"):
    RunConfig(classifiers=("mlp", "sklearn-svm")).validate()
  RunConfig(classifiers=("sklearn-mlp", "mlp")).validate()
