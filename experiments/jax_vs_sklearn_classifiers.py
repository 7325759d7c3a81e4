"""The JAX logistic regression and MLP against scikit-learn's, on real FashionMNIST.

    python -m experiments.jax_vs_sklearn_classifiers \
        [--json benchmarks/results/jax_vs_sklearn_classifiers_cpu_2core.json]

The protocol's balanced 6,000-image subsample of the training set for seeds 0, 1, 2
(subsample seed = classifier seed = seed), scored on all 10,000 test images. Besides
test accuracy it reports what the recipes were matched on: training accuracy, the
logistic regressions' objective (summed cross-entropy + ||W||^2 / 2, C=1) and the
MLPs' last-epoch training loss. "Agree" means |mean difference| within the larger
seed standard deviation, or within 2 standard errors of the difference.
Seconds include fitting and predicting (and, for JAX, compiling in seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from vpntk_jax import io_utils
from vpntk_jax.data import load_dataset
from vpntk_jax.evaluation import classifiers as sk
from vpntk_jax.evaluation import jax_classifiers as jc
from vpntk_jax.evaluation.protocol import balanced_subsample

SEEDS = (0, 1, 2)
PER_CLASS = 600  # the protocol's 6,000 over 10 classes
PAIRS = (("logistic_regression", "sklearn-logistic_regression"), ("mlp", "sklearn-mlp"))


def _lr_objective(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
  z = x.astype(np.float64) @ w + b
  z -= z.max(axis=1, keepdims=True)
  log_p = z[np.arange(len(y)), y] - np.log(np.exp(z).sum(axis=1))
  return float(-log_p.sum() + 0.5 * np.sum(np.asarray(w, np.float64) ** 2))


def _sklearn(name: str):
  def fit(x, y, x_eval, seed):
    model = sk.make_classifier(name, seed)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", ConvergenceWarning)
      model.fit(x, y)
    extra = {"iterations": int(np.max(model.n_iter_))}
    if name == "logistic_regression":
      extra["objective"] = _lr_objective(model.coef_.T, model.intercept_, x, y)
    else:
      extra["final_train_loss"] = float(model.loss_)
    return model.predict(x_eval), extra
  return fit


def _jax_lr(x, y, x_eval, seed):
  del seed
  params = jc.fit_logistic_regression(jnp.asarray(x), jnp.asarray(y, jnp.int32), num_classes=10)
  w, b = (np.asarray(a) for a in params)
  extra = {"iterations": jc.LR_ITERATIONS, "objective": _lr_objective(w, b, x, y)}
  return np.asarray(jc.predict_logistic_regression(params, jnp.asarray(x_eval))), extra


def _jax_mlp(x, y, x_eval, seed):
  params, losses = jc.fit_mlp(jnp.asarray(x), jnp.asarray(y, jnp.int32), jax.random.key(seed),
                              num_classes=10)
  extra = {"iterations": jc.MLP_EPOCHS, "final_train_loss": float(losses[-1])}
  return np.asarray(jc.predict_mlp(params, jnp.asarray(x_eval))), extra


FITS = {"logistic_regression": _jax_lr, "sklearn-logistic_regression": _sklearn("logistic_regression"),
        "mlp": _jax_mlp, "sklearn-mlp": _sklearn("mlp")}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--json", help="also write the result here")
  args = p.parse_args(argv)
  train, test = load_dataset("fashion_mnist", "train"), load_dataset("fashion_mnist", "test")
  x_test, y_test = sk.to_features(test.images), np.asarray(test.labels, np.int64)
  runs = {name: [] for name in FITS}
  for seed in SEEDS:
    subset = balanced_subsample(train.labels, PER_CLASS, seed=seed)
    x, y = sk.to_features(train.images[subset]), np.asarray(train.labels[subset], np.int64)
    both = np.concatenate([x, x_test])  # one fit scores the training and the test images
    for name, fit in FITS.items():
      start = time.perf_counter()
      predictions, extra = fit(x, y, both, seed)
      seconds = time.perf_counter() - start
      runs[name].append({"seed": seed, "seconds": seconds,
                         "train_accuracy": float(np.mean(predictions[:len(y)] == y)),
                         "test_accuracy": float(np.mean(predictions[len(y):] == y_test)), **extra})
      print(name, runs[name][-1], flush=True)

  def summary(name):
    acc = np.array([r["test_accuracy"] for r in runs[name]])
    return {"test_accuracy": acc.tolist(), "mean": float(acc.mean()), "std": float(acc.std(ddof=1)),
            "mean_train_accuracy": float(np.mean([r["train_accuracy"] for r in runs[name]])),
            "mean_seconds": float(np.mean([r["seconds"] for r in runs[name]]))}

  summaries = {name: summary(name) for name in FITS}
  agreement = {}
  for ours, theirs in PAIRS:
    a, b = summaries[ours], summaries[theirs]
    diff = a["mean"] - b["mean"]
    two_se = 2 * np.sqrt((a["std"] ** 2 + b["std"] ** 2) / len(SEEDS))
    agreement[ours] = {"mean_difference": diff, "larger_std": max(a["std"], b["std"]),
                       "two_standard_errors": float(two_se),
                       "agree": bool(abs(diff) <= max(a["std"], b["std"], two_se))}
  result = {"data": "fashion_mnist", "train_per_seed": int(PER_CLASS * 10),
            "test_size": int(len(y_test)), "seeds": list(SEEDS),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, jax {jax.__version__} "
                       f"on {jax.default_backend()}",
            "summary": summaries, "agreement": agreement, "runs": runs}
  print(json.dumps(result, indent=2))
  if args.json:
    io_utils.write_json_atomic(args.json, result)
  return result


if __name__ == "__main__":
  main()
