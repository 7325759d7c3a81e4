"""DPImageBench's evaluation recipe for its three networks (`models.benchmark_nets`):
how each is trained on synthetic images and which epoch's test accuracy is reported.

As its evaluator does for 28 x 28 data: the synthetic images are shuffled
(`numpy.random.default_rng(0)`) and the first 55/60 of them train (DPImageBench
generates 60,000 and trains on 55,000); Adam, learning rate 0.01 times 0.2 every 20
epochs, batch 256 (the last, smaller batch kept), cross-entropy, 50 epochs; after
every epoch the network is scored with an exponential moving average of its weights
(decay min(0.9999, (1 + t) / (10 + t)) after t updates; BatchNorm statistics are the
live network's), and the reported test accuracy is the one at the epoch of best
accuracy on the validation images (the last such epoch on ties). The validation
images are the real ones a benchmark protocol holds out (`--protocol dpimagebench`);
without them, the other 5/60 of the synthetic images, as DPImageBench does without a
sensitive validation set. Nothing is selected on the test set.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpntk_jax import arrays
from vpntk_jax.errors import ConfigError
from vpntk_jax.models.benchmark_nets import NETWORKS

EPOCHS = 50
BATCH_SIZE = 256
LEARNING_RATE = 0.01
LR_DECAY_EVERY_EPOCHS = 20
LR_DECAY = 0.2
EMA_DECAY = 0.9999
# DPImageBench trains on 55,000 of its 60,000 synthetic images.
TRAIN_FRACTION = 55 / 60
PREDICT_BATCH_SIZE = 512


def describe(name: str) -> str:
  """The recipe, stored in metrics.json's protocol text."""
  titles = {"resnet": "ResNet-110", "wrn": "WideResNet-40-4", "resnext": "ResNeXt-29 8x4"}
  return (f"DPImageBench's {name} ({titles.get(name, name)}, its 28x28 defaults), "
          f"Adam lr {LEARNING_RATE} x{LR_DECAY} every {LR_DECAY_EVERY_EPOCHS} epochs, batch "
          f"{BATCH_SIZE}, {EPOCHS} epochs on {TRAIN_FRACTION:.3g} of the shuffled subsample, "
          f"weight EMA {EMA_DECAY}; test accuracy at the epoch of best accuracy on the real "
          f"validation images (else on the held-out rest of the subsample)")


def _scale(images):
  return images.astype(jnp.float32) / 255.0


@functools.lru_cache(maxsize=8)
def _steps(model: nn.Module, steps_per_epoch: int):
  """(optimizer, jitted train step, jitted logits) for `model`."""
  schedule = optax.exponential_decay(LEARNING_RATE, LR_DECAY_EVERY_EPOCHS * steps_per_epoch,
                                     LR_DECAY, staircase=True)
  tx = optax.adam(schedule)

  @jax.jit
  def train_step(state, images, labels, dropout_key):
    params, batch_stats, opt_state, ema, count = state
    key = jax.random.fold_in(dropout_key, count)  # a fresh dropout mask every step

    def loss_fn(p):
      logits, updated = model.apply({"params": p, "batch_stats": batch_stats}, _scale(images),
                                    train=True, rngs={"dropout": key}, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, updated["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    count = count + 1
    decay = jnp.minimum(EMA_DECAY, (1.0 + count) / (10.0 + count))
    ema = jax.tree_util.tree_map(lambda e, p: e - (1.0 - decay) * (e - p), ema, params)
    return (params, batch_stats, opt_state, ema, count), loss

  @jax.jit
  def logits(params, batch_stats, images):
    return model.apply({"params": params, "batch_stats": batch_stats}, _scale(images),
                       train=False)

  return tx, train_step, logits


@functools.lru_cache(maxsize=8)
def _init_fn(model: nn.Module):
  # Jitted: Flax's eager init dispatches op by op.
  return jax.jit(functools.partial(model.init, train=False))


def _predict(logits_fn, params, batch_stats, images: np.ndarray) -> np.ndarray:
  # Fixed-size batches (the last padded): one compiled shape per set scored.
  size = min(PREDICT_BATCH_SIZE, images.shape[0])
  out = [np.asarray(jnp.argmax(logits_fn(params, batch_stats,
                                         arrays.padded_chunk(images, rows, size)[0]),
                               -1))[:len(rows)]
         for rows in arrays.consecutive_rows(images.shape[0], size)]
  return np.concatenate(out).astype(np.int64)


def fit_select_predict(name: str, x_train: np.ndarray, y_train: np.ndarray,
                       x_test: np.ndarray, *, num_classes: int, seed: int,
                       validation_labels: np.ndarray | None = None,
                       num_test: int | None = None, epochs: int | None = None,
                       model: nn.Module | None = None) -> tuple[np.ndarray, dict]:
  """Trains DPImageBench's `name` network and returns its predictions on `x_test` at
  the selected epoch, with {"selected_epoch", "selected_on", "selection_accuracy"}.

  With `validation_labels`, the last len(validation_labels) rows of `x_test` (after
  the first `num_test`) are the real validation images the epoch is selected on;
  without, the held-out synthetic rows are. `model` replaces the network (tests use
  shallow ones); `epochs` (default EPOCHS) too."""
  epochs = EPOCHS if epochs is None else epochs
  if name not in NETWORKS:
    raise ConfigError(f"unknown benchmark network {name!r}; expected one of {list(NETWORKS)}")
  if epochs < 1:
    raise ConfigError(f"epochs must be >= 1, got {epochs}")
  model = model or NETWORKS[name](num_classes=num_classes)
  order = np.random.default_rng(0).permutation(len(y_train))
  x_train, y_train = x_train[order], np.asarray(y_train)[order]
  cut = max(1, int(round(len(y_train) * TRAIN_FRACTION)))
  (x_fit, y_fit), (x_held, y_held) = (x_train[:cut], y_train[:cut]), (x_train[cut:],
                                                                       y_train[cut:])
  if validation_labels is not None:
    selected_on = "validation"
  elif len(y_held):
    selected_on = "held-out synthetic"
  else:
    raise ConfigError(f"{name}: no images to select the epoch on (no validation set, and "
                      f"{len(y_train)} synthetic images leave none held out)")
  batch = min(BATCH_SIZE, len(y_fit))
  steps_per_epoch = -(-len(y_fit) // batch)
  tx, train_step, logits_fn = _steps(model, steps_per_epoch)
  init_key, dropout_key = jax.random.split(jax.random.key(seed))
  variables = _init_fn(model)(init_key, jnp.zeros((1, *x_fit.shape[1:]), jnp.float32))
  params = variables["params"]
  state = (params, variables["batch_stats"], tx.init(params), params, jnp.zeros((), jnp.int32))
  y_fit = y_fit.astype(np.int32)
  shuffle = np.random.default_rng(seed)
  best = (-1.0, None, None)
  for epoch in range(epochs):
    # Batches gathered on the host: one compiled step per batch shape (two at most).
    epoch_order = shuffle.permutation(len(y_fit))
    for start in range(0, len(y_fit), batch):
      rows = epoch_order[start:start + batch]
      state, _ = train_step(state, x_fit[rows], y_fit[rows], dropout_key)
    _, batch_stats, _, ema, _ = state
    predictions = _predict(logits_fn, ema, batch_stats, x_test)
    if validation_labels is not None:
      accuracy = float(np.mean(predictions[num_test:] == validation_labels))
    else:
      accuracy = float(np.mean(_predict(logits_fn, ema, batch_stats, x_held) == y_held))
    if accuracy >= best[0]:  # the last best epoch, as DPImageBench's >= keeps it
      best = (accuracy, epoch, predictions)
  return best[2], {"selected_epoch": best[1] + 1, "selected_on": selected_on,
                   "selection_accuracy": best[0]}
