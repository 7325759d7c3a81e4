"""Runs a command under an enforced memory limit: a child memory cgroup of this
process's own (cgroup v1 memory.limit_in_bytes, or v2 memory.max).

Why a cgroup: `prlimit --as` limits address space, which a memory map of a file
larger than the limit exceeds at once however little of it is resident, and
RLIMIT_RSS is not enforced by Linux. A cgroup charges what is resident,
anonymous memory and page cache alike; at the limit the kernel reclaims clean
page cache (a mapped file's pages are re-read later) and kills the process
only when what cannot be reclaimed (anonymous memory, no swap) exceeds it. A
child of our own cgroup stays inside whatever limit we already run under.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_ROOT = Path("/sys/fs/cgroup")
# Per version: the limit, the peak usage, and how often the limit was reached.
_FILES = {"v1": ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt"),
          "v2": ("memory.max", "memory.peak", "memory.events")}


def own_cgroup() -> tuple[str, Path] | None:
  """(version, directory) of this process's memory cgroup, or None."""
  v2 = None
  with open("/proc/self/cgroup") as f:
    for line in f:
      hierarchy, controllers, path = line.rstrip("\n").split(":", 2)
      if "memory" in controllers.split(","):
        return "v1", _ROOT / "memory" / path.lstrip("/")
      if hierarchy == "0" and (_ROOT / path.lstrip("/") / "memory.max").exists():
        v2 = ("v2", _ROOT / path.lstrip("/"))
  return v2


def _read(path: Path) -> str:
  return path.read_text().strip()


def run_limited(command: list[str], limit_bytes: int) -> tuple[subprocess.CompletedProcess,
                                                               dict]:
  """Runs `command` (stdout captured) in a new child cgroup limited to
  `limit_bytes`; returns its result and what the cgroup recorded."""
  found = own_cgroup()
  if found is None:
    raise RuntimeError("no memory cgroup found in /proc/self/cgroup; run the benchmark "
                       "without --memory-limit-mb under an outside limit instead (e.g. "
                       "systemd-run --user --scope -p MemoryMax=2G ...)")
  version, parent = found
  limit_file, peak_file, events_file = _FILES[version]
  group = parent / f"vpntk_bench_{os.getpid()}"
  try:
    group.mkdir()
  except OSError as e:
    raise RuntimeError(f"cannot create the memory cgroup {group}: {e}") from e
  try:
    (group / limit_file).write_text(str(limit_bytes))
    procs = group / "cgroup.procs"
    # The child joins the cgroup between fork and exec, so all it allocates counts.
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False,
                            preexec_fn=lambda: procs.write_text(str(os.getpid())))
    record = {"mechanism": f"cgroup {version} {group / limit_file}",
              "limit_bytes": int(_read(group / limit_file)),
              "cgroup_peak_bytes": int(_read(group / peak_file))
              if (group / peak_file).exists() else None}
    if version == "v1":
      record["times_limit_reached"] = int(_read(group / events_file))
    else:
      events = dict(line.split() for line in _read(group / events_file).splitlines())
      record["times_limit_reached"] = int(events.get("max", 0))
    return result, record
  finally:
    try:
      group.rmdir()
    except OSError:
      pass  # a straggler still inside; the kernel frees the group once it is empty
