"""Generator training against a released embedding: a thin Optax loop.

Everything here is post-processing of the released (noisy) embedding: it can
run for any number of steps at no privacy cost. The private data never enters.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax import struct
from tqdm.auto import tqdm

from vpntk_jax import arrays
from vpntk_jax import io_utils
from vpntk_jax import sharding
from vpntk_jax.features import ntk


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
  # ConvCondGenerator's width (defaults: the reference DP-NTK generator). VP-NTK
  # ignores them: its generator is the public one, whatever its width.
  generator_hidden: int = 200
  generator_channels: int = 16
  checkpoint_every: int = 500
  max_to_keep: int = 2
  log_every: int = 50
  # With a validation release: synthetic samples (balanced over classes) whose
  # embedding is compared with it at every checkpoint.
  validation_samples: int = 2000

  def __post_init__(self):
    if self.steps < 0 or self.batch_size <= 0 or self.learning_rate <= 0:
      raise ValueError("steps >= 0, batch_size > 0 and learning_rate > 0 are required")
    if min(self.latent_dim, self.generator_hidden, self.generator_channels) <= 0:
      raise ValueError("latent_dim, generator_hidden and generator_channels must be positive")
    if self.checkpoint_every <= 0 or self.validation_samples <= 0:
      raise ValueError("checkpoint_every > 0 and validation_samples > 0 are required")
    if self.schedule not in ("constant", "cosine"):
      raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  if config.schedule == "constant" or config.steps == 0:
    lr = config.learning_rate
  else:
    lr = optax.cosine_decay_schedule(config.learning_rate, config.steps,
                                     alpha=config.final_lr_fraction)
  return optax.adam(lr)


LOSSES = ("mmd", "cosine", "mmd+cosine")


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any  # what the optimizer trains
  model_state: Any  # the rest: BatchNorm statistics, frozen public weights
  opt_state: Any


def squared_distance(a, b) -> jax.Array:
  """||a - b||^2 summed over all leaves of two pytrees of the same structure."""
  return sum(jnp.sum(jnp.square(x - y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def embedding_loss(kind: str = "mmd", cosine_weight: float = 1.0) -> Callable:
  """(target, synthetic) -> loss: "mmd" ||t - s||^2, "cosine" 1 - cos(t, s), or
  "mmd+cosine" ||t - s||^2 + cosine_weight * (1 - cos(t, s)) (VP-NTK's objective)."""
  if kind not in LOSSES:
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")

  def loss(target, synthetic):
    mmd = squared_distance(target, synthetic)
    if kind == "mmd":
      return mmd
    t, s = jax.tree.leaves(target), jax.tree.leaves(synthetic)
    dot = sum(jnp.vdot(a, b) for a, b in zip(t, s))
    norms = jnp.sqrt(sum(jnp.vdot(a, a) for a in t) * sum(jnp.vdot(b, b) for b in s))
    one_minus_cos = 1.0 - dot / jnp.maximum(norms, 1e-30)
    return one_minus_cos if kind == "cosine" else mmd + cosine_weight * one_minus_cos
  return loss


def class_grouped_batch(key: jax.Array, num_classes: int, per_class: int, latent_dim: int):
  """Latents and labels for a batch with `per_class` rows of each class, grouped."""
  z = jax.random.normal(key, (num_classes * per_class, latent_dim))
  labels = jnp.repeat(jnp.arange(num_classes), per_class)
  return z, labels


class Sampler(Protocol):
  """What training needs from a model that maps (latent, label) to images in [0, 1].

  `init` returns (params, model_state); `apply` returns (images NHWC,
  new model_state). DP-NTK trains a whole generator (`GeneratorSampler`);
  VP-NTK trains prompts around a frozen one (`vpntk_jax.models.prompt`).
  """

  def init(self, key: jax.Array, latent_dim: int) -> tuple[Any, Any]: ...

  def apply(self, params, model_state, z: jax.Array, labels: jax.Array, *,
            train: bool) -> tuple[jax.Array, Any]: ...

  def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer for its params, given the run's (`make_optimizer`)."""


@dataclasses.dataclass(frozen=True)
class GeneratorSampler:
  """A Flax generator trained from scratch; model_state holds its BatchNorm statistics."""
  generator: Any

  def init(self, key: jax.Array, latent_dim: int):
    variables = self.generator.init(key, jnp.zeros((2, latent_dim)), jnp.zeros((2,), jnp.int32),
                                    train=False)
    return variables["params"], variables.get("batch_stats", {})

  def apply(self, params, model_state, z, labels, *, train: bool):
    variables = {"params": params, "batch_stats": model_state}
    if not train:
      return self.generator.apply(variables, z, labels, train=False), model_state
    images, updates = self.generator.apply(variables, z, labels, train=True,
                                           mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
    return base


def as_sampler(model) -> Sampler:
  """A Sampler as is; a bare Flax generator wrapped in GeneratorSampler."""
  return GeneratorSampler(model) if isinstance(model, nn.Module) else model


def init_state(key: jax.Array, model, optimizer, latent_dim: int) -> TrainState:
  params, model_state = as_sampler(model).init(key, latent_dim)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params))


def make_train_step(model, embed_fn: Callable, target, optimizer, *,
                    num_classes: int, per_class: int, latent_dim: int,
                    base_key: jax.Array, loss_fn: Callable = squared_distance, mesh=None):
  """Returns `step(state) -> (state, loss)`, jitted.

  The batch key is fold_in(base_key, step), so a resumed run draws exactly the
  batches an uninterrupted one would.

  Args:
    model: a Sampler, or a Flax generator (trained from scratch).
    embed_fn: class-grouped images (C, n, H*W*C) in [0, 1] -> embedding pytree.
    target: the released embedding (same pytree structure).
    loss_fn: (target, synthetic) -> scalar.
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
    synthetic = embed_fn(images.reshape(num_classes, per_class, -1))
    return loss_fn(target, synthetic), model_state

  @jax.jit
  def jitted_step(state: TrainState, target):
    key = jax.random.fold_in(base_key, state.step)
    (loss, model_state), grads = jax.value_and_grad(loss_and_state, has_aux=True)(
        state.params, state.model_state, target, key)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    return TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                      model_state=model_state, opt_state=opt_state), loss

  # The target is an argument, not a closed-over constant baked into the program.
  target = replicate(target, mesh)
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


class BestCheckpoint:
  """Keeps the TrainState with the smallest validation distance so far (Orbax
  `best_fn`, one checkpoint), so a resumed run knows its best."""

  def __init__(self, directory: str):
    options = ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["distance"],
                                           best_mode="min", create=True)
    self._manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)

  def offer(self, state: TrainState, distance: float) -> None:
    step = int(state.step)
    if step not in self._manager.all_steps():  # re-offered after a resume
      self._manager.save(step, args=ocp.args.StandardSave(state),
                         metrics={"distance": float(distance)}, force=True)

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def restore_best(self, like: TrainState) -> TrainState:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    return self._manager.restore(self.best_step(), args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


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
    _start_log(log_path, start_step)
  bar = tqdm(total=config.steps, initial=start_step, desc="train generator",
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
        with open(log_path, "a") as f:
          f.write(f"{step},{loss_value:.8g},{time.perf_counter() - t0:.3f}\n")
      bar.set_postfix(loss=f"{loss_value:.4g}")
    bar.update(1)
    if step % config.checkpoint_every == 0 or step == config.steps:
      if checkpointer is not None:
        checkpointer.save(state, force=step == config.steps)
      if on_checkpoint is not None:
        on_checkpoint(state)
  bar.close()
  return state


def _start_log(log_path: str, start_step: int) -> None:
  """Creates the log, or keeps only its rows up to `start_step` (the resumed checkpoint).

  A run killed between checkpoints logged steps it will now redo; dropping
  them keeps one row per step.
  """
  header = "step,loss,seconds\n"
  if not os.path.exists(log_path):
    io_utils.write_bytes_atomic(log_path, header.encode())
    return
  with open(log_path) as f:
    lines = f.read().splitlines(keepends=True)
  kept = [line for line in lines[1:]
          if line.split(",")[0].isdigit() and int(line.split(",")[0]) <= start_step]
  if len(kept) != len(lines) - 1:
    io_utils.write_bytes_atomic(log_path, (header + "".join(kept)).encode())


def train_to_match(features, model, target_matrix, *, num_classes: int, config: TrainConfig,
                   seed: int, loss_fn: Callable = squared_distance,
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
        tqdm.write(f"resumed training at step {int(state.step)}")
  state = replicate(state, mesh)
  step_fn = make_train_step(sampler, features.synthetic_mean, target, optimizer,
                            num_classes=num_classes, per_class=per_class,
                            latent_dim=config.latent_dim, base_key=key_batches,
                            loss_fn=loss_fn, mesh=mesh)
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
        _record_selection(selection_log, int(s.step), d, best.best_step())

  state = fit(step_fn, state, config, checkpointer=checkpointer, log_path=log_path,
              progress=progress, on_checkpoint=on_checkpoint)
  if checkpointer is not None:
    checkpointer.close()
  if best is not None:
    if best.best_step() is not None:
      state = best.restore_best(like)
      if progress:
        tqdm.write(f"selected the checkpoint of step {int(state.step)} (closest to the "
                   f"validation release)")
    best.close()
  return state


def _record_selection(path: str, step: int, distance: float, best_step: int | None) -> None:
  """Adds one checkpoint's validation distance to the selection record (JSON)."""
  record = {"metric": "squared distance between the synthetic embedding and the validation "
                      "release", "distances": {}}
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
  record["distances"][str(step)] = distance
  record["selected_step"] = best_step
  io_utils.write_json_atomic(path, record)


# Pixels generated per batch: 5000 images at 28x28x1. A fixed image count
# would need ~20x the memory at 128x128 (the generator's full-size
# activations dominate): a 128x128 synthesis died with bad_alloc on a shared
# 24 GB machine.
GENERATE_PIXELS_PER_BATCH = 5000 * 28 * 28


def generation_batch_size(image_shape) -> int:
  """Images per synthesis batch for `image_shape` (H, W, C): a fixed pixel budget."""
  return max(1, GENERATE_PIXELS_PER_BATCH // int(np.prod(image_shape)))


def generate(model, state: TrainState, key: jax.Array, labels, *, latent_dim: int,
             batch_size: int | None = None, progress: bool = False) -> np.ndarray:
  """Images (uint8 NHWC) for the given labels, in batches, BN in inference mode.

  `batch_size` None: `generation_batch_size` of the model's output shape.
  """
  sampler = as_sampler(model)

  @jax.jit
  def sample(params, model_state, key, labels):
    z = jax.random.normal(key, (labels.shape[0], latent_dim))
    x, _ = sampler.apply(params, model_state, z, labels, train=False)
    return jnp.round(jnp.clip(x, 0.0, 1.0) * 255).astype(jnp.uint8)

  labels = np.asarray(labels, np.int32)
  if batch_size is None:
    one = jax.eval_shape(sample, state.params, state.model_state, key, labels[:1])
    batch_size = generation_batch_size(one.shape[1:])
  out = []
  bar = tqdm(total=len(labels), desc="synthesize", disable=not progress, dynamic_ncols=True)
  for i, rows in enumerate(arrays.consecutive_rows(len(labels), batch_size)):
    padded, _ = arrays.padded_chunk(labels, rows, batch_size)
    out.append(np.asarray(sample(state.params, state.model_state, jax.random.fold_in(key, i),
                                 padded))[:len(rows)])
    bar.update(len(rows))
  bar.close()
  return np.concatenate(out, axis=0)
