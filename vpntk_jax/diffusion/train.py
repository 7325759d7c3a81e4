"""Non-private training of an EDM model (public pretraining): one jitted Optax step.

The DP-SGD engine (`vpntk_jax.privacy.dp_sgd`) clips and noises the
gradients of `edm.per_example_loss`; this step takes the gradient of
`edm.batch_loss`, the mean of the same losses (the same draws, one flat batch);
`pretrain_edm` runs it as a checkpointed, resumable loop.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np
import optax

from vpntk_jax.diffusion import edm
from vpntk_jax.log import Progress, append_csv_row, say, start_csv_log
from vpntk_jax.training.checkpoints import Checkpointer
from vpntk_jax.training.ema import ema_decay_at, ema_update
from vpntk_jax.training.samplers import TrainState


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation, *,
                    multiplicity: int, num_classes: int | None = None,
                    label_dropout: float = 0.0):
  """Returns `step(params, opt_state, ema_params, images, labels, key, ema_decay)
  -> (params, opt_state, ema_params, loss)`, jitted.

  images: [B, H, W, C] uint8; labels: [B] int; key: fresh per step (e.g.
  fold_in(base_key, step)); ema_decay: this step's (`ema.ema_decay_at`). loss
  is the batch loss before the update.
  """
  loss_kwargs = dict(multiplicity=multiplicity, num_classes=num_classes,
                     label_dropout=label_dropout)

  def loss_fn(params, images, labels, key):
    return edm.batch_loss(params, apply_fn, images, labels, key, **loss_kwargs)

  @jax.jit
  def step(params, opt_state, ema_params, images, labels, key, ema_decay):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, ema_update(ema_params, params, ema_decay), loss

  return step


def pretrain_edm(apply_fn: Callable, params, images: np.ndarray, labels: np.ndarray, settings,
                 *, num_classes: int | None, label_dropout: float, seed: int,
                 checkpoint_dir: str, log_path: str | None = None, quiet: bool = False):
  """Non-private EDM training on public images, checkpointed in `checkpoint_dir` and
  resumed from it; returns the EMA weights.

  settings: a `blocks.PublicPretrainConfig` (steps, batch_size,
  learning_rate, multiplicity, ema_decay, checkpoint_every). log_path: a CSV of
  (step, mean loss since the last row, seconds) at every checkpoint.
  """
  optimizer = optax.adam(settings.learning_rate)
  step_fn = make_train_step(apply_fn, optimizer, multiplicity=settings.multiplicity,
                            num_classes=num_classes, label_dropout=label_dropout)
  state = TrainState(step=np.asarray(0, np.int32), params=params, model_state=params,
                     opt_state=optimizer.init(params))
  checkpoints = Checkpointer(checkpoint_dir, every=settings.checkpoint_every, max_to_keep=1)
  try:
    if checkpoints.latest_step() is not None:
      state = checkpoints.restore(state)
    start = int(state.step)
    if start < settings.steps:
      say(f"public pretraining on {len(labels)} images: steps {start}..{settings.steps - 1}",
          quiet)
    key = jax.random.key(seed)
    rng = np.random.default_rng([seed, start])  # public batches: any seed will do
    params, ema, opt_state = state.params, state.model_state, state.opt_state
    if log_path is not None:
      start_csv_log(log_path, "step,loss,seconds", start)
    bar = Progress(total=settings.steps, initial=start, desc="pretrain", disable=quiet,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    losses = []
    for step in range(start, settings.steps):
      rows = rng.integers(0, len(labels), settings.batch_size)
      params, opt_state, ema, loss = step_fn(params, opt_state, ema, images[rows], labels[rows],
                                             jax.random.fold_in(key, step),
                                             ema_decay_at(step, settings.ema_decay))
      losses.append(loss)
      bar.update(1)
      if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
        state = TrainState(step=np.asarray(step + 1, np.int32), params=params,
                           model_state=ema, opt_state=opt_state)
        checkpoints.save(state, force=True)
        if log_path is not None:
          append_csv_row(log_path, step + 1, f"{float(np.mean(jax.device_get(losses))):.6g}",
                         f"{time.perf_counter() - t0:.1f}")
        losses = []
    bar.close()
  finally:
    checkpoints.close()
  return state.model_state
