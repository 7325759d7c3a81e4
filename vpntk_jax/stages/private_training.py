"""The many-step private mechanism: DP-SGD on the private set, charged before it runs.

`train_with_dp_sgd` runs a `privacy.plan.DpSgdPlan` chunk by chunk. Before a
chunk runs, its record goes into the ledger through `charge` (which writes
privacy.json); after it, the state is checkpointed (Orbax). A run killed
mid-chunk has charged that chunk; resumed, it restarts from the last
checkpoint and charges the steps it runs again, marked as redone: the ledger
never undercounts, and a resumed run that redid steps shows its total above
the budget.

What the operator sees is public or post-processing: step counts and
seconds. The realised batch sizes and the private loss are functions of the
private data and are never logged. Time is a side channel on the padded batch
size: under replace-one the batch sizes depend on nothing private; under
add/remove they depend on N; with `max_batch` every batch is padded alike.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from vpntk_jax import distributed
from vpntk_jax.data import ImageDataset
from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import PrivacyLedger
from vpntk_jax.privacy import example_keys
from vpntk_jax.privacy.plan import DpSgdPlan, charged_steps
from vpntk_jax.run_files import CHECKPOINTS, DP_SGD_LOG
from vpntk_jax.stages import mean_embedding
from vpntk_jax.privacy import dp_sgd
from vpntk_jax.training import param_subsets
from vpntk_jax.training.checkpoints import Checkpointer
from vpntk_jax.training.ema import ema_decay_at, ema_update
from vpntk_jax.training.samplers import TrainState
from vpntk_jax.log import Progress, append_csv_row, say, start_csv_log

LOG_HEADER = "step,seconds"


def train_with_dp_sgd(state: TrainState, private: ImageDataset, plan: DpSgdPlan, *,
                      loss_fn: Callable, optimizer: optax.GradientTransformation,
                      ema_decay: float, checkpoint_dir: str, checkpoint_every: int,
                      ledger: PrivacyLedger, charge: Callable[[Any], PrivacyLedger],
                      microbatch: int | None = None, mesh=None,
                      log_path: str | None = None, quiet: bool = False) -> TrainState:
  """`plan.steps` DP-SGD steps from `state` (params trained, model_state their EMA).

  loss_fn(params, (image, label), key) -> the loss of ONE example. `ledger` is
  the run's ledger as stored; `charge(record)` adds a record to it, writes it,
  and returns the new ledger. Batches, noise and the per-example keys (the
  diffusion draws) come from `plan.noise_seed` (None: OS entropy); a record's key
  at a step is a function of the secret, the step and the record itself
  (`privacy.example_keys`), never of its row.
  """
  step_fn = dp_sgd.make_dp_sgd_step(loss_fn, optimizer, clip_norm=plan.clip_norm,
                                    noise_multiplier=plan.noise_multiplier,
                                    expected_batch_size=plan.expected_batch_size,
                                    adjacency=plan.adjacency, microbatch=microbatch, mesh=mesh)
  ema = jax.jit(ema_update)
  lattice = dp_sgd.lattice_for(state.params, plan.clip_norm)
  num_params = lattice.size
  checkpoints = Checkpointer(checkpoint_dir, every=checkpoint_every, max_to_keep=2)
  try:
    if checkpoints.latest_step() is not None:
      state = checkpoints.restore(state)
    start = int(state.step)
    charged = charged_steps(ledger)
    if start < plan.steps:
      say(f"DP-SGD: steps {start}..{plan.steps - 1}, noise multiplier "
          f"{plan.noise_multiplier:.4g}, Poisson rate {plan.sampling_rate:.4g}"
          + (f" (resumed; steps {start}..{charged - 1} were charged before and are charged "
             f"again)" if start < charged else ""), quiet)
    images, labels = private.images, private.labels
    # With truncated batches every batch has the same padded shape, so a step's time
    # says nothing about the realised (private under add/remove) batch size.
    bucket = padding_bucket(plan.max_batch, mesh)
    base_key = plan.example_key()
    if log_path is not None:
      start_csv_log(log_path, LOG_HEADER, start)
    t0 = time.perf_counter()
    bar = Progress(total=plan.steps, initial=start, desc="DP-SGD", disable=quiet,
               dynamic_ncols=True)
    params, ema_params, opt_state = state.params, state.model_state, state.opt_state
    for chunk_start in range(start, plan.steps, checkpoint_every):
      end = min(chunk_start + checkpoint_every, plan.steps)
      charge(plan.chunk_record(chunk_start, end, lattice=lattice,
                               num_params=num_params, redone=chunk_start < charged))
      batch_rng, noise = plan.chunk_generators(chunk_start)
      for step in range(chunk_start, end):
        indices, mask = dp_sgd.poisson_batch(batch_rng, len(labels), plan.sampling_rate,
                                             plan.max_batch, bucket=bucket)
        batch = (images[indices], labels[indices])
        keys = example_keys.step_keys(base_key, step, *batch)
        params, opt_state = step_fn(params, opt_state, batch, mask, keys, noise)
        ema_params = ema(ema_params, params, ema_decay_at(step, ema_decay))
        bar.update(1)
      state = TrainState(step=np.asarray(end, np.int32), params=params,
                         model_state=ema_params, opt_state=opt_state)
      checkpoints.save(state, force=True)
      if log_path is not None:
        append_csv_row(log_path, end, f"{time.perf_counter() - t0:.1f}")
    bar.close()
  finally:
    checkpoints.close()
  return state


def padding_bucket(max_batch: int | None, mesh=None) -> int:
  """Batches are padded to a multiple of this: 64 rows per device; with truncated
  batches, the one padded size of every batch."""
  base = dp_sgd.BUCKET * (mesh.size if mesh is not None else 1)
  return dp_sgd.bucket_size(max_batch, base) if max_batch is not None else base


def trained_subset(loss_fn: Callable, params, trainable: Callable[[str], bool] | None):
  """(the loss over the trained parameters, those parameters, the frozen rest or None).

  The loss closes over the frozen values, once per run, so a step built on it
  compiles once; the trainer, its clipping and its noise see the trained subset only.
  """
  if trainable is None:
    return loss_fn, params, None
  trained, frozen = param_subsets.split(params, trainable)

  def subset_loss(sub, example, key):
    return loss_fn(param_subsets.join(sub, frozen), example, key)
  return subset_loss, trained, frozen


def public_count(config, private: ImageDataset) -> int:
  """N of the sampling rate: declared under add/remove (required there), else the
  private set's size, which replace-one neighbours share (the mean embedding's divisor
  without a released count)."""
  return mean_embedding.divisor(config, private, None)


@dataclasses.dataclass(frozen=True, eq=False)
class DpSgdTraining:
  """DP-SGD on the private set, a part a recipe composes: its settings (a
  `blocks.DpSgdConfig`), the loss of one example, and the parameters it trains.

  The recipe supplies the start state (post-processing: public pretraining or the
  initial tokens) and whatever fixed-noise releases the steps share the budget
  with (`other_sigmas`); the part calibrates, checks and runs the steps.
  """
  settings: Any  # blocks.DpSgdConfig
  loss_fn: Callable  # (params, (image, label), key) -> the loss of ONE example
  params_template: Callable[[], Any]  # parameters shaped like those trained
  example_shape: tuple[int, int, int]  # one private image
  # Parameter-efficient fine-tuning: which parameters (by path, "a/b/kernel") the
  # steps train; the others are frozen at the start state's values, and the
  # clipping, the noise and the optimizer see the trained ones only. None: all.
  trainable: Callable[[str], bool] | None = None

  def _subset(self, params):
    return trained_subset(self.loss_fn, params, self.trainable)

  @functools.cached_property
  def optimizer(self) -> optax.GradientTransformation:
    """DP-SGD's Adam: one object, whose state the start state holds and whose jitted
    update the steps compile once."""
    return optax.adam(self.settings.learning_rate)

  def plan(self, config, private: ImageDataset, other_sigmas: tuple = ()) -> DpSgdPlan:
    dp = self.settings
    return DpSgdPlan.calibrate(
        epsilon=config.epsilon, delta=config.delta, accountant=config.accountant,
        adjacency=config.adjacency, num_examples=public_count(config, private),
        expected_batch_size=dp.batch_size, steps=dp.steps, clip_norm=dp.clip_norm,
        other_sigmas=other_sigmas, max_batch=dp.max_batch, noise_seed=config.noise_seed)

  def check(self, private: ImageDataset, config, *, other_sigmas: tuple = (),
            mesh=None) -> None:
    """Before anything is written: the rate, the calibration (an infeasible budget
    fails here) and the device's memory."""
    dp = self.settings
    if dp.steps == 0:
      return
    n = public_count(config, private)
    if dp.batch_size > n:
      raise ConfigError(f"dp_sgd.batch_size {dp.batch_size} exceeds the {n} examples the "
                        f"sampling rate divides by: the rate must be in (0, 1]")
    self.plan(config, private, other_sigmas)
    self.check_memory(mesh)

  def check_memory(self, mesh=None) -> None:
    """Refuses a DP-SGD batch a device cannot hold, from the compiled step's own
    memory analysis of one device's share of a batch 4 standard deviations above
    the expected size (on one device, the steps of that size reuse the compilation)."""
    dp = self.settings
    if dp.microbatch is not None and dp_sgd.BUCKET % dp.microbatch:
      raise ConfigError(f"dp_sgd.microbatch must divide {dp_sgd.BUCKET} (batches are padded "
                        f"to multiples of it per device), got {dp.microbatch}")
    expected = dp.batch_size
    devices = mesh.size if mesh is not None else 1
    rows = dp_sgd.bucket_size(dp.max_batch if dp.max_batch is not None
                              else math.ceil(expected + 4 * math.sqrt(expected)),
                              padding_bucket(None, mesh)) // devices
    example = (np.zeros(self.example_shape, np.uint8), np.zeros((), np.int32))
    loss_fn, params, _ = self._subset(self.params_template())
    need = dp_sgd.step_memory_bytes(loss_fn, params, example, rows,
                                    dp.clip_norm, microbatch=dp.microbatch)
    have = device_memory_bytes()
    if need is not None and have is not None and need > 0.9 * have:
      raise ConfigError(
          f"a DP-SGD batch of {rows} padded rows per device (dp_sgd.batch_size {expected}, "
          f"multiplicity {dp.multiplicity}) needs about {need / 2**30:.1f} GiB of "
          f"{jax.devices()[0].device_kind} memory; {have / 2**30:.1f} GiB are available. "
          f"Set dp_sgd.microbatch (e.g. 16), or lower dp_sgd.batch_size or "
          f"dp_sgd.multiplicity")

  def train(self, state: TrainState, private: ImageDataset, config, run, *,
            ledger: PrivacyLedger, charge, other_sigmas: tuple = (), mesh=None,
            quiet: bool = False) -> TrainState:
    """The steps from `state` (params trained, model_state their EMA), charged as
    they go; no steps: `state` as it is."""
    dp = self.settings
    if dp.steps == 0:
      say("no DP-SGD steps: the model is the public start (a public-only baseline)", quiet)
      return state
    loss_fn, trained, frozen = self._subset(state.params)
    if frozen is not None:
      say(f"DP-SGD trains {param_subsets.count(trained):,} of "
          f"{param_subsets.count(state.params):,} parameters ({dp.trainable})", quiet)
      ema_trained, ema_frozen = param_subsets.split(state.model_state, self.trainable)
      state = TrainState(step=state.step, params=trained, model_state=ema_trained,
                         opt_state=self.optimizer.init(trained))
    state = train_with_dp_sgd(
        state, private, self.plan(config, private, other_sigmas), loss_fn=loss_fn,
        optimizer=self.optimizer, ema_decay=dp.ema_decay,
        checkpoint_dir=run.file(CHECKPOINTS), checkpoint_every=dp.checkpoint_every,
        ledger=ledger, charge=charge, microbatch=dp.microbatch, mesh=mesh,
        log_path=run.file(DP_SGD_LOG) if distributed.is_primary() else None, quiet=quiet)
    if frozen is None:
      return state
    return TrainState(step=state.step, params=param_subsets.join(state.params, frozen),
                      model_state=param_subsets.join(state.model_state, ema_frozen),
                      opt_state=())


def device_memory_bytes() -> int | None:
  """Memory of the first device: the accelerator's limit, or the host's available
  memory on the CPU; None where neither is known."""
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None
