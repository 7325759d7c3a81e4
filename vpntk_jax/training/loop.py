"""The generator-training loop: an Optax step, `fit`, and `train_to_match`.

Everything here is post-processing of the released (noisy) embedding: it can
run for any number of steps at no privacy cost. The private data never enters.
Besides the loop: the optimizer (`make_optimizer`), placement on a device mesh
(`replicate`), the validation distance that picks a checkpoint, and the CSV log.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpntk_jax import sharding
from vpntk_jax.blocks import TrainConfig
from vpntk_jax.features import ntk
from vpntk_jax.log import Progress, append_csv_row, say, start_csv_log
from vpntk_jax.training.checkpoints import BestCheckpoint, Checkpointer, record_selection
from vpntk_jax.training.losses import (EmbeddingLoss, MatchingObjective, matching_objective,
                                       squared_distance)
from vpntk_jax.training.samplers import TrainState, as_sampler, class_grouped_batch, init_state


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  if config.schedule == "constant" or config.steps == 0:
    lr = config.learning_rate
  else:
    lr = optax.cosine_decay_schedule(config.learning_rate, config.steps,
                                     alpha=config.final_lr_fraction)
  return optax.adam(lr)


def make_train_step(model, objective: MatchingObjective, target, optimizer, *,
                    num_classes: int, per_class: int, latent_dim: int,
                    base_key: jax.Array, mesh=None):
  """Returns `step(state) -> (state, loss)`, jitted.

  The batch key is fold_in(base_key, step), so a resumed run draws exactly the
  batches an uninterrupted one would.

  Args:
    model: a Sampler, or a Flax generator (trained from scratch).
    objective: `matching_objective(features, loss_fn)`; its loss reads
      class-grouped images (C, n, H*W*C) in [0, 1].
    target: the released embedding (objective.prepare is applied to it once).
    mesh: optional 1-D device mesh: the synthetic batch is split over it
      (data parallel); `state` must then be replicated on the mesh
      (`replicate(state, mesh)`).
  """
  sampler = as_sampler(model)

  def loss_and_state(params, model_state, target, key):
    z, labels = class_grouped_batch(key, num_classes, per_class, latent_dim)
    if mesh is not None:
      z = jax.lax.with_sharding_constraint(z, sharding.batch_sharding(mesh))
      labels = jax.lax.with_sharding_constraint(labels, sharding.batch_sharding(mesh))
    images, model_state = sampler.apply(params, model_state, z, labels, train=True)
    return objective.loss(target, images.reshape(num_classes, per_class, -1)), model_state

  @jax.jit
  def jitted_step(state: TrainState, target):
    key = jax.random.fold_in(base_key, state.step)
    (loss, model_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
        state.params, state.model_state, target, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      model_state=model_state, opt_state=opt_state), loss

  # The target is an argument, not a closed-over constant baked into the program.
  target = replicate(objective.prepare(target), mesh)
  return lambda state: jitted_step(state, target)


def replicate(tree, mesh):
  """Puts a pytree on every device of `mesh` (no-op without a mesh)."""
  if mesh is None:
    return tree
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    # Across hosts, device_put cannot move device arrays (a restored checkpoint);
    # every process holds the same values, so each places its own host copy.
    tree = jax.tree.map(np.asarray, tree)
  return jax.device_put(tree, NamedSharding(mesh, P()))


def make_validation_distance(model, embed_fn: Callable, target, *, num_classes: int,
                             per_class: int, latent_dim: int, key: jax.Array) -> Callable:
  """Returns `distance(state) -> ||target - mu_syn||^2` on a fixed synthetic set.

  The samples use the same latents at every call and inference-mode BatchNorm,
  as synthesis does, so distances of different checkpoints are comparable.
  """
  sampler = as_sampler(model)
  z, labels = class_grouped_batch(key, num_classes, per_class, latent_dim)

  @jax.jit
  def distance(params, model_state, target):
    images, _ = sampler.apply(params, model_state, z, labels, train=False)
    return squared_distance(target, embed_fn(images.reshape(num_classes, per_class, -1)))

  return lambda state: distance(state.params, state.model_state, target)


def fit(step_fn, state: TrainState, config: TrainConfig, *,
        checkpointer: Checkpointer | None = None, log_path: str | None = None,
        progress: bool = True,
        on_checkpoint: Callable[[TrainState], None] | None = None) -> TrainState:
  """Runs `step_fn` until `config.steps`, checkpointing and logging at the edges.

  Appends a `step,loss,seconds` row to `log_path` (CSV) as each is logged, so
  the log shows progress; a resumed run keeps its earlier rows up to the
  checkpoint it resumes from. `on_checkpoint(state)` runs at every checkpoint.
  """
  start_step = int(state.step)
  if log_path is not None:
    start_csv_log(log_path, "step,loss,seconds", start_step)
  bar = Progress(total=config.steps, initial=start_step, desc="train generator",
             disable=not progress, dynamic_ncols=True)
  t0 = time.perf_counter()
  # The step is counted on the host: reading state.step would sync every step.
  for step in range(start_step + 1, config.steps + 1):
    state, loss = step_fn(state)
    if step % config.log_every == 0 or step == config.steps:
      loss_value = float(loss)
      if not math.isfinite(loss_value):
        raise FloatingPointError(f"generator loss became {loss_value} at step {step}")
      if log_path is not None:
        append_csv_row(log_path, step, f"{loss_value:.8g}", f"{time.perf_counter() - t0:.3f}")
      bar.set_postfix(loss=f"{loss_value:.4g}")
    bar.update(1)
    if step % config.checkpoint_every == 0 or step == config.steps:
      if checkpointer is not None:
        checkpointer.save(state, force=step == config.steps)
      if on_checkpoint is not None:
        on_checkpoint(state)
  bar.close()
  return state


def train_to_match(features, model, target_matrix, *, num_classes: int, config: TrainConfig,
                   seed: int, loss_fn: Callable = EmbeddingLoss(),
                   checkpoint_dir: str | None = None, log_path: str | None = None, mesh=None,
                   progress: bool = True, validation_matrix=None,
                   selection_dir: str | None = None,
                   selection_log: str | None = None) -> TrainState:
  """Trains `model` so its labelled mean embedding matches `target_matrix` (P, C).

  Resumes from the last checkpoint in `checkpoint_dir` when there is one; the
  batches after resuming are those an uninterrupted run would draw.

  With `validation_matrix` (a second release of the same embedding), every
  checkpoint's synthetic embedding is compared with it; the closest state is
  kept in `selection_dir` and returned instead of the last one, and every
  distance is written to `selection_log` (JSON).
  """
  sampler = as_sampler(model)
  per_class = max(1, -(-config.batch_size // num_classes))  # round up to whole classes
  template = features.template(num_classes)
  target = ntk.matrix_to_embedding(jnp.asarray(target_matrix), template)
  optimizer = sampler.optimizer(make_optimizer(config))
  key_init, key_batches = jax.random.split(jax.random.key(seed))
  state = init_state(key_init, sampler, optimizer, config.latent_dim)
  like = state
  checkpointer = None
  if checkpoint_dir is not None:
    checkpointer = Checkpointer(checkpoint_dir, every=config.checkpoint_every,
                                max_to_keep=config.max_to_keep)
    if checkpointer.latest_step() is not None:
      state = checkpointer.restore(state)
      if progress:
        say(f"resumed training at step {int(state.step)}")
  state = replicate(state, mesh)
  step_fn = make_train_step(sampler, matching_objective(features, loss_fn), target, optimizer,
                            num_classes=num_classes, per_class=per_class,
                            latent_dim=config.latent_dim, base_key=key_batches, mesh=mesh)
  best, on_checkpoint = None, None
  if validation_matrix is not None:
    if selection_dir is None:
      raise ValueError("a validation release needs a selection_dir for the best checkpoint")
    best = BestCheckpoint(selection_dir)
    distance = make_validation_distance(
        sampler, features.synthetic_mean,
        ntk.matrix_to_embedding(jnp.asarray(validation_matrix), template),
        num_classes=num_classes, per_class=max(1, config.validation_samples // num_classes),
        latent_dim=config.latent_dim, key=jax.random.fold_in(key_init, 1))

    def on_checkpoint(s: TrainState) -> None:
      d = float(distance(s))
      best.offer(s, d)
      if selection_log is not None:
        record_selection(selection_log, int(s.step), d, best.best_step())

  state = fit(step_fn, state, config, checkpointer=checkpointer, log_path=log_path,
              progress=progress, on_checkpoint=on_checkpoint)
  if checkpointer is not None:
    checkpointer.close()
  if best is not None:
    if best.best_step() is not None:
      state = best.restore_best(like)
      if progress:
        say(f"selected the checkpoint of step {int(state.step)} (closest to the "
                   f"validation release)")
    best.close()
  return state
