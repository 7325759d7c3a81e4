"""Generator training against a released embedding: a thin Optax loop.

Everything here is post-processing of the released (noisy) embedding: it can
run for any number of steps at no privacy cost. The private data never enters.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from tqdm.auto import tqdm

from vpntk_jax import arrays
from vpntk_jax import io_utils
from vpntk_jax import sharding


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Generator-training hyperparameters (defaults: DP-NTK on 28x28 images)."""
  steps: int = 2000
  # 500 keeps the CPU demo near 5 minutes; on a GPU, 5000 costs about the same.
  batch_size: int = 500
  learning_rate: float = 1e-2
  # "constant" or "cosine" (decays to lr * final_lr_fraction over `steps`).
  schedule: str = "cosine"
  final_lr_fraction: float = 0.1
  latent_dim: int = 5
  checkpoint_every: int = 500
  max_to_keep: int = 2
  log_every: int = 50

  def __post_init__(self):
    if self.steps < 0 or self.batch_size <= 0 or self.learning_rate <= 0:
      raise ValueError("steps >= 0, batch_size > 0 and learning_rate > 0 are required")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  if config.schedule == "constant" or config.steps == 0:
    lr = config.learning_rate
  else:
    lr = optax.cosine_decay_schedule(config.learning_rate, config.steps,
                                     alpha=config.final_lr_fraction)
  return optax.adam(lr)


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def squared_distance(a, b) -> jax.Array:
  """||a - b||^2 summed over all leaves of two pytrees of the same structure."""
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def class_grouped_batch(key: jax.Array, num_classes: int, per_class: int, latent_dim: int):
  """Latents and labels for a batch with `per_class` rows of each class, grouped."""
  z = jax.random.normal(key, (num_classes * per_class, latent_dim))
  labels = jnp.repeat(jnp.arange(num_classes), per_class)
  return z, labels


def init_state(key: jax.Array, generator, optimizer, latent_dim: int) -> TrainState:
  z = jnp.zeros((2, latent_dim))
  variables = generator.init(key, z, jnp.zeros((2,), jnp.int32), train=False)
  params = variables["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}),
                    opt_state=optimizer.init(params))


def make_train_step(generator, embed_fn: Callable, target, optimizer, *,
                    num_classes: int, per_class: int, latent_dim: int,
                    base_key: jax.Array, loss_fn: Callable = squared_distance, mesh=None):
  """Returns `step(state) -> (state, loss)`, jitted.

  The batch key is fold_in(base_key, step), so a resumed run draws exactly the
  batches an uninterrupted one would.

  Args:
    embed_fn: class-grouped images (C, n, H*W*C) in [0, 1] -> embedding pytree.
    target: the released embedding (same pytree structure).
    mesh: optional 1-D device mesh: the synthetic batch is split over it
      (data parallel); `state` must then be replicated on the mesh
      (`replicate(state, mesh)`).
  """
  def loss_and_stats(params, batch_stats, target, key):
    z, labels = class_grouped_batch(key, num_classes, per_class, latent_dim)
    if mesh is not None:
      z = jax.lax.with_sharding_constraint(z, sharding.batch_sharding(mesh))
      labels = jax.lax.with_sharding_constraint(labels, sharding.batch_sharding(mesh))
    images, updates = generator.apply({"params": params, "batch_stats": batch_stats},
                                      z, labels, train=True, mutable=["batch_stats"])
    synthetic = embed_fn(images.reshape(num_classes, per_class, -1))
    return loss_fn(target, synthetic), updates["batch_stats"]

  @jax.jit
  def jitted_step(state: TrainState, target):
    key = jax.random.fold_in(base_key, state.step)
    (loss, batch_stats), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(
        state.params, state.batch_stats, target, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      batch_stats=batch_stats, opt_state=opt_state), loss

  # The target is an argument, not a closed-over constant baked into the program.
  target = replicate(target, mesh)
  return lambda state: jitted_step(state, target)


def replicate(tree, mesh):
  """Puts a pytree on every device of `mesh` (no-op without a mesh)."""
  if mesh is None:
    return tree
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  return jax.device_put(tree, NamedSharding(mesh, P()))


class Checkpointer:
  """Orbax checkpoints of a TrainState in `directory`, resumable."""

  def __init__(self, directory: str, *, every: int, max_to_keep: int):
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(every, 1),
                                           max_to_keep=max_to_keep, create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, like: TrainState) -> TrainState:
    step = self._manager.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def save(self, state: TrainState, *, force: bool = False) -> None:
    self._manager.save(int(state.step), args=ocp.args.StandardSave(state), force=force)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def fit(step_fn, state: TrainState, config: TrainConfig, *,
        checkpointer: Checkpointer | None = None, log_path: str | None = None,
        progress: bool = True) -> TrainState:
  """Runs `step_fn` until `config.steps`, checkpointing and logging at the edges.

  Appends `step,loss,seconds` rows to `log_path` (CSV), so a resumed run keeps
  its earlier log.
  """
  start_step = int(state.step)
  if log_path is not None and not os.path.exists(log_path):
    io_utils.write_bytes_atomic(log_path, b"step,loss,seconds\n")
  bar = tqdm(total=config.steps, initial=start_step, desc="train generator",
             disable=not progress, dynamic_ncols=True)
  t0 = time.perf_counter()
  rows = []
  # The step is counted on the host: reading state.step would sync every step.
  for step in range(start_step + 1, config.steps + 1):
    state, loss = step_fn(state)
    if step % config.log_every == 0 or step == config.steps:
      loss_value = float(loss)
      if not math.isfinite(loss_value):
        raise FloatingPointError(f"generator loss became {loss_value} at step {step}")
      rows.append(f"{step},{loss_value:.8g},{time.perf_counter() - t0:.3f}\n")
      bar.set_postfix(loss=f"{loss_value:.4g}")
    bar.update(1)
    if checkpointer is not None and (step % config.checkpoint_every == 0 or step == config.steps):
      checkpointer.save(state, force=step == config.steps)
      _flush_rows(log_path, rows)
  bar.close()
  _flush_rows(log_path, rows)
  return state


def _flush_rows(log_path: str | None, rows: list) -> None:
  if log_path is not None and rows:
    with open(log_path, "a") as f:
      f.writelines(rows)
  rows.clear()


def generate(generator, state: TrainState, key: jax.Array, labels, *, latent_dim: int,
             batch_size: int = 5000) -> np.ndarray:
  """Images (uint8 NHWC) for the given labels, in batches, BN in inference mode."""
  @jax.jit
  def sample(variables, key, labels):
    z = jax.random.normal(key, (labels.shape[0], latent_dim))
    x = generator.apply(variables, z, labels, train=False)
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255).astype(jnp.uint8)

  variables = {"params": state.params, "batch_stats": state.batch_stats}

  labels = np.asarray(labels, np.int32)
  out = []
  for i, rows in enumerate(arrays.consecutive_rows(len(labels), batch_size)):
    padded, _ = arrays.padded_chunk(labels, rows, batch_size)
    out.append(np.asarray(sample(variables, jax.random.fold_in(key, i), padded))[:len(rows)])
  return np.concatenate(out, axis=0)
