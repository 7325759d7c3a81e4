"""Non-private training of an EDM model (public pretraining): one jitted Optax step.

The DP-SGD engine (`vpntk_jax.training.dp_sgd`) clips and noises the
gradients of `edm.per_example_loss`; this step takes the gradient of
`edm.batch_loss`, the mean of the same losses (the same draws, one flat batch).
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

from vpntk_jax.diffusion import edm
from vpntk_jax.training.ema import ema_update


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
