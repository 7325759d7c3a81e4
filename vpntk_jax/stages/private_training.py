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

import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from vpntk_jax.data import ImageDataset
from vpntk_jax.privacy import PrivacyLedger
from vpntk_jax.privacy import example_keys
from vpntk_jax.privacy.plan import DpSgdPlan, charged_steps
from vpntk_jax.privacy import dp_sgd
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

