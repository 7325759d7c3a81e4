"""Orbax checkpoints of a TrainState: the resumable ones, the best one, the selection record.

`Checkpointer` keeps the latest states of a run so it can resume;
`BestCheckpoint` keeps the state closest to a validation release, and
`record_selection` writes every checkpoint's distance to it (JSON).
"""

from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from vpntk_jax import io_utils
from vpntk_jax.training.samplers import TrainState


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


def record_selection(path: str, step: int, distance: float, best_step: int | None) -> None:
  """Adds one checkpoint's validation distance to the selection record (JSON)."""
  record = {"metric": "squared distance between the synthetic embedding and the validation "
                      "release", "distances": {}}
  if os.path.exists(path):
    with open(path) as f:
      record = json.load(f)
  record["distances"][str(step)] = distance
  record["selected_step"] = best_step
  io_utils.write_json_atomic(path, record)
