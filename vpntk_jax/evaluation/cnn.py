"""Small Flax CNN classifier for any HxWxC image size, trained for a fixed number of epochs."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpntk_jax import arrays, sharding
from vpntk_jax.training.loop import replicate
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.models.layers import max_pool_2x2

BATCH_SIZE = 128
LEARNING_RATE = 1e-3
PREDICT_BATCH_SIZE = 256
# Two 2x2 max-pools need at least 4 pixels per side to leave a non-empty feature map.
MIN_SIDE = 4

Params = Any


class SmallCNN(nn.Module):
  """conv3x3(32)-relu-pool -> conv3x3(64)-relu-pool -> flatten -> dense(128)-relu -> logits."""

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Conv(32, (3, 3))(x))
    x = max_pool_2x2(x)
    x = nn.relu(nn.Conv(64, (3, 3))(x))
    x = max_pool_2x2(x)
    # Flatten keeps where a feature is; global pooling would throw that away.
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x)


def _check_images(images: np.ndarray) -> None:
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"images must be uint8 NHWC, got {images.dtype} {images.shape}")
  if min(images.shape[1:3]) < MIN_SIDE:
    raise DataError(f"the CNN needs images of at least {MIN_SIDE}x{MIN_SIDE}, got {images.shape}")


def _scale(images: jax.Array) -> jax.Array:
  return images.astype(jnp.float32) / 255.0


# Cached so repeated evaluations (and tests) reuse the compiled functions.
@functools.lru_cache(maxsize=8)
def _train_step_fn(
  model: nn.Module, learning_rate: float, mesh=None
) -> tuple[optax.GradientTransformation, Callable]:
  """Builds Adam and the jitted step; the step gathers its uint8 batch on the device.

  With a mesh the batch's rows are split over its devices; the batch is padded to
  a multiple of them with rows of `weight` 0, which the loss leaves out.
  """
  tx = optax.adam(learning_rate)
  rows = None if mesh is None else sharding.batch_sharding(mesh)

  def loss_fn(params: Params, x: jax.Array, y: jax.Array, weight) -> jax.Array:
    logits = model.apply({"params": params}, x)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return losses.mean() if weight is None else jnp.sum(losses * weight) / jnp.sum(weight)

  @jax.jit
  def train_step(params, opt_state, images, labels, idx, weight=None):
    x, y = _scale(images[idx]), labels[idx]
    if rows is not None:
      x, y = jax.lax.with_sharding_constraint(x, rows), jax.lax.with_sharding_constraint(y, rows)
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y, weight)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  # Driven by a Python loop, not lax.scan: XLA CPU runs convolutions inside a while
  # loop single-threaded and far slower (measured ~8x per step).
  return tx, train_step


@functools.lru_cache(maxsize=8)
def _init_fn(model: nn.Module) -> Callable:
  # Jitted because Flax's eager init dispatches op by op (seconds on CPU).
  return jax.jit(model.init)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _epoch_order(key: jax.Array, num: int, steps: int, batch_size: int) -> jax.Array:
  """A fresh shuffle as (steps, batch_size) indices; the ragged tail is dropped."""
  return jax.random.permutation(key, num)[: steps * batch_size].reshape(steps, batch_size)


@functools.lru_cache(maxsize=8)
def _predict_fn(model: nn.Module) -> Callable:
  return jax.jit(lambda p, x: jnp.argmax(model.apply({"params": p}, _scale(x)), axis=-1))


@functools.lru_cache(maxsize=8)
def _logits_fn(model: nn.Module) -> Callable:
  return jax.jit(lambda p, x: model.apply({"params": p}, _scale(x)))


def _in_batches(apply: Callable, params: Params, images: np.ndarray,
                batch_size: int) -> list[np.ndarray]:
  """apply(params, batch) over fixed-size batches (the last one padded), trimmed."""
  return [np.asarray(apply(params, arrays.padded_chunk(images, rows, batch_size)[0]))[:len(rows)]
          for rows in arrays.consecutive_rows(images.shape[0], batch_size)]


def train_cnn(
  images: np.ndarray,
  labels: np.ndarray,
  *,
  num_classes: int,
  key: jax.Array,
  epochs: int,
  batch_size: int = BATCH_SIZE,
  learning_rate: float = LEARNING_RATE,
  model: nn.Module | None = None,
  mesh=None,
) -> tuple[Params, list[float]]:
  """Trains a classifier (default SmallCNN) with Adam for exactly `epochs` epochs.

  `model` maps images in [0, 1] to logits (VP-NTK's public extractor is one).
  With a `mesh` the same steps are data-parallel: each batch split over its
  devices (padded to a multiple of them with rows the loss leaves out; the
  models have no BatchNorm, so the padding changes nothing), the images and
  parameters replicated, the result on this process's first device.
  Returns the parameters and the mean training loss of each epoch.
  """
  model = model or SmallCNN(num_classes=num_classes)
  _check_images(images)
  if epochs < 1:
    raise ConfigError(f"cnn epochs must be >= 1, got {epochs}")
  if images.shape[0] == 0:
    raise DataError("no training examples for the CNN")
  labels = np.asarray(labels)
  if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= num_classes:
    # Out-of-range labels would silently give a wrong loss rather than fail.
    raise DataError(
      f"labels must be ({images.shape[0]},) in [0, {num_classes}), got {labels.shape}"
    )
  # Tiny sets train on one full batch rather than failing; otherwise the ragged tail
  # of each shuffled epoch is dropped so every step has the same (compiled) shape.
  batch_size = min(batch_size, images.shape[0])
  steps = images.shape[0] // batch_size
  tx, train_step = _train_step_fn(model, float(learning_rate), mesh)
  padded = sharding.round_up_to_devices(batch_size, mesh)
  place = sharding.row_placer(mesh) if mesh is not None else (lambda idx: idx)
  weight = (None if mesh is None
            else place((np.arange(padded) < batch_size).astype(np.float32)))
  init_key, shuffle_key = jax.random.split(key)
  dummy = jnp.zeros((1, *images.shape[1:]), jnp.float32)
  params = replicate(_init_fn(model)(init_key, dummy)["params"], mesh)
  opt_state = replicate(tx.init(params), mesh)
  device_images = replicate(jnp.asarray(images), mesh)
  device_labels = replicate(jnp.asarray(labels, dtype=jnp.int32), mesh)
  epoch_losses = []
  for epoch_key in jax.random.split(shuffle_key, epochs):
    # Host-side index rows: slicing a device array would compile extra eager ops.
    order = np.asarray(_epoch_order(epoch_key, images.shape[0], steps, batch_size))
    order = np.pad(order, ((0, 0), (0, padded - batch_size)))  # padding: row 0, weight 0
    losses = []
    for idx in order:
      params, opt_state, loss = train_step(params, opt_state, device_images, device_labels,
                                           place(idx), weight)
      losses.append(loss)
    epoch_losses.append(float(np.mean(jax.device_get(losses))))
  if mesh is not None:  # where load_public puts trained weights
    params = jax.device_put(params, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
  return params, epoch_losses


def predict_cnn(
  params: Params, images: np.ndarray, *, num_classes: int, batch_size: int = PREDICT_BATCH_SIZE,
  model: nn.Module | None = None,
) -> np.ndarray:
  """Predicts labels in fixed-size batches (the last one padded) to compile once per shape."""
  _check_images(images)
  predictions = _in_batches(_predict_fn(model or SmallCNN(num_classes=num_classes)), params,
                            images, batch_size)
  if not predictions:
    return np.zeros((0,), np.int64)
  return np.concatenate(predictions).astype(np.int64)


def predict_logits(params: Params, images: np.ndarray, *, model: nn.Module, num_classes: int,
                   batch_size: int = PREDICT_BATCH_SIZE) -> np.ndarray:
  """float32 (n, num_classes) logits of `model` on uint8 images, batched as `predict_cnn`."""
  logits = _in_batches(_logits_fn(model), params, images, batch_size)
  if not logits:
    return np.zeros((0, num_classes), np.float32)
  return np.concatenate(logits).astype(np.float32)


def split_validation(num: int, fraction: float, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits range(num) into (train, validation) indices; validation gets floor(fraction * num)."""
  if not 0.0 <= fraction < 1.0:
    raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
  order = np.random.default_rng(seed).permutation(num)
  num_val = int(fraction * num)
  return np.sort(order[num_val:]), np.sort(order[:num_val])


def fit_predict_cnn(
  x_train: np.ndarray,
  y_train: np.ndarray,
  x_test: np.ndarray,
  *,
  num_classes: int,
  seed: int,
  epochs: int,
  val_fraction: float = 0.1,
) -> tuple[np.ndarray, dict]:
  """Trains on the training set minus a held-out synthetic split and predicts `x_test`.

  The split is only reported (`synthetic_val_accuracy`); nothing is selected by it,
  and nothing at all looks at the test labels.
  """
  x_train, x_test = np.asarray(x_train), np.asarray(x_test)
  y_train = np.asarray(y_train).astype(np.int64)
  _check_images(x_train)
  _check_images(x_test)
  if x_train.shape[1:] != x_test.shape[1:]:
    raise DataError(
      f"train and test images differ in shape: {x_train.shape[1:]} vs {x_test.shape[1:]}"
    )
  train_idx, val_idx = split_validation(x_train.shape[0], val_fraction, seed=seed)
  params, losses = train_cnn(
    x_train[train_idx], y_train[train_idx], num_classes=num_classes,
    key=jax.random.key(seed), epochs=epochs,
  )
  val_accuracy = None
  if val_idx.size:
    val_pred = predict_cnn(params, x_train[val_idx], num_classes=num_classes)
    val_accuracy = float(np.mean(val_pred == y_train[val_idx]))
  info = {
    "synthetic_val_accuracy": val_accuracy,
    "train_losses": losses,
    "train_examples": int(train_idx.size),
  }
  return predict_cnn(params, x_test, num_classes=num_classes), info
