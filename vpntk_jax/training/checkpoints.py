"""Orbax checkpoints of a TrainState: the resumable ones, the best one, the selection record.

`Checkpointer` keeps the latest states of a run so it can resume;
`BestCheckpoint` keeps the state closest to a validation release, and
`record_selection` writes every checkpoint's distance to it (JSON).
`reading_checkpoint` turns a damaged checkpoint into a DataError naming it
(the public-model loaders read theirs through it too).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Iterator

import jax
import orbax.checkpoint as ocp

from vpntk_jax import io_utils
from vpntk_jax.errors import DataError, VpntkError
from vpntk_jax.training.samplers import TrainState

# Orbax logs through absl's logger; a damaged checkpoint makes it log failed reads
# the DataError already reports.
_ORBAX_LOGGER = "absl"
_DROPPING_ABANDONED_READS = False  # the filters of _drop_abandoned_reads are installed


@contextlib.contextmanager
def reading_checkpoint(directory: str) -> Iterator[None]:
  """Reads of the Orbax checkpoint in `directory`: any failure but a VpntkError (a
  caller's own refusal, such as a shape mismatch) is a DataError saying the
  checkpoint is corrupt and naming it, without Orbax's log lines or tracebacks."""
  if not os.path.isdir(directory):
    raise DataError(f"the checkpoint {directory} is missing")
  _drop_abandoned_reads()
  held = _HeldRecords()
  logger = logging.getLogger(_ORBAX_LOGGER)
  logger.addFilter(held)
  try:
    yield
  except VpntkError:
    raise
  except Exception as e:  # Orbax and TensorStore raise bare Exception, ValueError, ...
    raise DataError(f"the checkpoint in {directory} is corrupt or unreadable: "
                    f"{_root_cause(e)}") from None
  finally:
    logger.removeFilter(held)
  for record in held.records:  # a read that succeeded: its warnings still matter
    logger.handle(record)


class _HeldRecords(logging.Filter):
  """Keeps a logger's records instead of emitting them."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record: logging.LogRecord) -> bool:
    self.records.append(record)
    return False


def _chain(error: BaseException | None) -> Iterator[BaseException]:
  """`error`, then the errors it was raised from, innermost last."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost error, without TensorStore's spec dump."""
  *_, error = _chain(error)
  line = (str(error).splitlines() or [type(error).__name__])[0]
  return line.split(" [tensorstore_spec=")[0][:400]


def _drop_abandoned_reads() -> None:
  """Stops the reads a failed restore abandons from printing tracebacks.

  When one read fails Orbax closes its event loop with the others in flight.
  TensorStore completes them on the closed loop (RuntimeError 'Event loop is
  closed'); their coroutines and tasks, collected later, report their own read
  errors. The first two go to sys.unraisablehook, the tasks to asyncio's logger,
  each printed with its traceback, and after the failure has been raised, so
  the filters stay installed. They drop nothing but these.
  """
  global _DROPPING_ABANDONED_READS
  if _DROPPING_ABANDONED_READS:
    return
  _DROPPING_ABANDONED_READS = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_abandoned_read(unraisable):
      previous(unraisable)

  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(
      lambda record: not ("never retrieved" in str(record.msg) and record.exc_info
                          and _raised_in_orbax(record.exc_info[1])))


def _is_abandoned_read(unraisable) -> bool:
  if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
    return True
  return _raised_in_orbax(unraisable.exc_value)


def _raised_in_orbax(error: BaseException | None) -> bool:
  """Whether `error`, or an error it was raised from, was raised in Orbax's code."""
  orbax = f"{os.sep}orbax{os.sep}"
  for e in _chain(error):
    tb = e.__traceback__
    while tb is not None:
      if orbax in tb.tb_frame.f_code.co_filename:
        return True
      tb = tb.tb_next
  return False


class Checkpointer:
  """Orbax checkpoints of a TrainState in `directory`, resumable."""

  def __init__(self, directory: str, *, every: int, max_to_keep: int):
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(every, 1),
                                           max_to_keep=max_to_keep, create=True)
    self._directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def restore(self, like: TrainState) -> TrainState:
    return _restore(self._manager, self._directory, self._manager.latest_step(), like)

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
    self._directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(self._directory, options=options)

  def offer(self, state: TrainState, distance: float) -> None:
    step = int(state.step)
    if step not in self._manager.all_steps():  # re-offered after a resume
      self._manager.save(step, args=ocp.args.StandardSave(state),
                         metrics={"distance": float(distance)}, force=True)

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def restore_best(self, like: TrainState) -> TrainState:
    return _restore(self._manager, self._directory, self.best_step(), like)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _restore(manager: ocp.CheckpointManager, directory: str, step: int,
             like: TrainState) -> TrainState:
  """The TrainState of `step` (shaped like `like`); a damaged one is a DataError."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  manager.wait_until_finished()  # a save in flight has no step directory yet
  with reading_checkpoint(os.path.join(directory, str(step))):
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def check_readable(directory: str) -> None:
  """Reads every array of each step kept in `directory` (none there: nothing to
  check), so a resumed run finds a damaged checkpoint before it writes anything; a
  damaged one is a DataError naming it."""
  if not os.path.isdir(directory):
    return
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    for step in manager.all_steps():
      with reading_checkpoint(os.path.join(os.path.abspath(directory), str(step))):
        manager.restore(step, args=ocp.args.StandardRestore())
  finally:
    manager.close()


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
