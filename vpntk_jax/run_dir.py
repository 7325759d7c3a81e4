"""The run directory's life cycle: open it (new, resumed or staged, see `staging`),
hold its lock, and check what it stores against the run's config and ledger.

Run directory contract (`runs/NAME/`):
  config.json     the RunConfig
  privacy.json    the privacy ledger (every release, its sensitivity, sigma, ...)
  release.npz     the noisy release(s): the only outputs that touched private data
  checkpoints/    Orbax checkpoints of the training state
  best/, selection.json
                  with a validation release only: the checkpoint closest to it,
                  which synthesis uses, and every checkpoint's distance
  train_log.csv   step, loss, seconds
  synthetic.npz   `images` uint8 NHWC and `labels`
  samples.png     one row per class
  loss.png        training curve
  metrics.json    accuracy of classifiers trained on synthetic data, on the real test set
  report.md/.html samples, the privacy statement in plain words, metrics (vpntk report)
  public.json     methods with public models: the public models used
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import zipfile

import numpy as np

from vpntk_jax import config as config_lib
from vpntk_jax.config import RunConfig
from vpntk_jax.errors import DataError, RunDirError
from vpntk_jax.privacy.ledger import PrivacyLedger, read_ledger
from vpntk_jax.privacy.release import array_digest
from vpntk_jax.run_files import CONFIG, PRIVACY, RELEASE, RUN_DIR_NAMES
from vpntk_jax.staging import (RunDir, check_replaceable, is_nonempty_dir, make_dir, stage,
                               staging_path)


LOCK_SUFFIX = ".lock"


@dataclasses.dataclass
class RunLock:
  """`OUT.lock`, held by the one process that may write `OUT` (and its staging)."""
  path: str

  def release(self) -> None:
    try:
      os.remove(self.path)
    except FileNotFoundError:
      pass


def lock(out: str) -> RunLock:
  """Takes `out`'s lock, or fails at once naming the process that holds it. A lock
  left by a process of this host that no longer runs is taken over."""
  path = out.rstrip("/") + LOCK_SUFFIX
  make_dir(os.path.dirname(os.path.abspath(path)))
  me = f"{socket.gethostname()} {os.getpid()}"
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      with open(path) as f:
        holder = f.read().strip()
      host, _, pid = holder.partition(" ")
      if host == socket.gethostname() and pid.isdigit() and not _running(int(pid)):
        os.remove(path)  # its process is gone: the lock is stale
        continue
      raise RunDirError(f"{out} is in use by another vpntk process ({holder or 'unknown'}, "
                        f"{path}); wait for it to finish, or use another --out. If no such "
                        f"process runs, remove {path}.") from None
    except OSError as e:
      raise RunDirError(f"cannot create the lock file {path}: {e.strerror or e}") from None
    with os.fdopen(fd, "w") as f:
      f.write(me)
    return RunLock(path)
  raise RunDirError(f"cannot take the lock {path}")


def _running(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def open_run_dir(out: str, config: RunConfig, *, resume: bool, force: bool,
                 new_release: bool = False, release_arrays: dict[str, str] | None = None
                 ) -> tuple[RunDir, PrivacyLedger | None]:
  """Decides how to use `out`. Creates directories only once that is settled.

  When resuming, `config` must equal the stored one up to its allowed changes,
  and the stored release must be the one the ledger records (`release_arrays`:
  ledger name -> array name, as `load_release` takes). Returns the run dir and
  the ledger of a run being replaced (its releases stay charged).
  """
  if resume and force:
    raise RunDirError("--resume and --force exclude each other")
  if os.path.exists(out) and not os.path.isdir(out):
    raise RunDirError(f"{out} exists and is not a directory")
  if not is_nonempty_dir(out):
    if resume:
      raise RunDirError(f"nothing to resume: {out} does not exist or is empty")
    make_dir(out)
    return RunDir(out, out), None
  if resume:
    stored = load_config(out)
    changed = [k for k in config_lib.diff(stored, config)
               if k not in config_lib.RESUMABLE_CHANGES]
    if changed:
      raise RunDirError(
          f"cannot resume {out} with different settings: {', '.join(changed)} differ from "
          f"its config.json. Resume with the same settings, or start a new run.")
    if not (os.path.exists(os.path.join(out, RELEASE)) and
            os.path.exists(os.path.join(out, PRIVACY))):
      raise RunDirError(
          f"{out} has no complete private release (release.npz + privacy.json) to resume "
          f"from; use --force to start it over (its ledger, if any, stays charged).")
    # Before anything is written: the release must be the one the ledger records.
    load_release(os.path.join(out, RELEASE), release_arrays or {},
                 read_ledger(os.path.join(out, PRIVACY)))
    return RunDir(out, out, resumed=True), None
  if not force:
    raise RunDirError(
        f"{out} exists and is not empty. Use --resume to continue that run (reusing its "
        f"private release), --force to replace it, or another --out.")
  check_replaceable(out, RUN_DIR_NAMES, CONFIG, "a vpntk run directory")
  prior = None
  # A replacement that died after releasing left its ledger in the staging
  # directory: those releases stay charged before the directory is reused.
  for ledger_path in (os.path.join(out, PRIVACY), os.path.join(staging_path(out), PRIVACY)):
    if os.path.exists(ledger_path):
      found = read_ledger(ledger_path)
      prior = found if prior is None else prior.merge(found)
  if prior is not None:
    if prior.releases and not new_release:
      raise RunDirError(
          f"{out} holds a private release ({prior.total_epsilon():.3g}-DP). Replacing the run "
          f"draws fresh noise on the private data, which costs privacy again: the new ledger "
          f"will charge both releases. Add --new-release to accept that, or use --resume to "
          f"reuse the existing release.")
  return stage(out), prior


def load_config(run_path: str) -> RunConfig:
  """The RunConfig a run directory stores."""
  path = os.path.join(run_path, CONFIG)
  if not os.path.exists(path):
    raise RunDirError(f"{run_path} is not a vpntk run directory (no {CONFIG})")
  with open(path) as f:
    return RunConfig.from_json(json.load(f))


def load_release(path: str, release_arrays: dict[str, str],
                 ledger: PrivacyLedger) -> dict[str, np.ndarray]:
  """The arrays of a stored release.npz; checks it holds exactly `release_arrays`
  (ledger name -> array name: what this run's settings release) and what `ledger`
  (its privacy.json) recorded."""
  with np.load(path) as z:
    release = {k: z[k] for k in z.files}
  wanted = set(release_arrays.values())
  if set(release) != wanted:
    raise RunDirError(f"{path} holds {sorted(release)}, this run's settings need "
                      f"{sorted(wanted)}: it was not made with these settings")
  check_release_matches_ledger(path, release, release_arrays, ledger)
  return release


def check_release_matches_ledger(path: str, release: dict[str, np.ndarray],
                                 release_arrays: dict[str, str],
                                 ledger: PrivacyLedger) -> None:
  """Raises unless every active release the ledger fingerprinted is the stored array.

  A release.npz swapped in from another run, or damaged, would otherwise be trained
  on under a privacy record that does not describe it.
  """
  for record in ledger.active_releases:
    array = release_arrays.get(record.name)
    if array not in release:
      continue
    if record.sha256 is None:
      # A record without its fingerprint cannot vouch for the stored array.
      raise RunDirError(
          f"{path}: privacy.json's record of {record.name!r} has no sha256, so the stored "
          f"release cannot be matched to it; refusing to train on it. Restore the original "
          f"privacy.json, or start over with --force --new-release (charged again).")
    if array_digest(release[array]) != record.sha256:
      raise RunDirError(
          f"{path}: {array!r} is not the release its privacy.json records (sha256 differs): "
          f"it was replaced or damaged after it was made. Restore the original release.npz; "
          f"releasing again would spend the privacy budget a second time.")


def check_reusable_release(source: str, config: RunConfig,
                           release_arrays: dict[str, str]) -> None:
  """Raises unless run `source` holds a complete release made with this config's
  release settings."""
  stored = load_config(source)
  differ = config_lib.release_differences(stored, config)
  if differ:
    raise RunDirError(f"cannot reuse the release of {source}: {', '.join(differ)} differ, and "
                      f"they change what is released. Only post-processing settings (train.*, "
                      f"loss, cosine_weight, evaluation, and the method's post-processing "
                      f"options such as vp-ntk's prompt.*) may differ.")
  for name in (RELEASE, PRIVACY):
    if not os.path.exists(os.path.join(source, name)):
      raise RunDirError(f"{source} has no {name} to reuse")
  load_release(os.path.join(source, RELEASE), release_arrays,
               read_ledger(os.path.join(source, PRIVACY)))


def read_synthetic(path: str) -> tuple[np.ndarray, np.ndarray]:
  """The images and labels of a run's synthetic.npz; a damaged one is a DataError."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return z["images"], z["labels"]
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise DataError(f"{path} is corrupt or not a synthetic set written by vpntk "
                    f"({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
