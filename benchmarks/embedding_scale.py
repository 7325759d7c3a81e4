"""Streams a large private set through the fast embedding in bounded memory.

    python -m benchmarks.embedding_scale --n 200000 --size 64    # CelebA-sized, in RAM
    python -m benchmarks.embedding_scale --n 60000 --size 28 --channels 1
    # larger than the memory it is given: memory-mapped .npy under a cgroup limit
    python -m benchmarks.embedding_scale --n 262144 --size 64 --layers 1000,relu,1 \
        --stream /tmp/vpntk_stream_262k --memory-limit-mb 1536 \
        --json benchmarks/results/embedding_stream_262k_64x64x3_cpu.json   # 3 GiB file

Images are random uint8 (the point is memory and time, not the numbers; no
CelebA ships offline). Network: the DP-NTK CelebA shape on raw pixels,
(3000, relu, 200, layernorm, 1) with 2 classes, unless --layers is given.

`--stream DIR`: the private set is the npy source `npy:DIR` (vpntk_jax/data/npy.py,
memory-mapped), loaded and embedded as a run does (`load_dataset`, then the
release stage's `mean_embedding.private_embedding_sum`). DIR is written first
if it does not exist, dropped from the page cache, and deleted afterwards.
`--memory-limit-mb`: the measurement runs in a child process under that cgroup
limit (benchmarks/memory_limit.py).

Prints JSON: seconds, examples/s, peak RSS (resident pages, the mapped file's
included), peak anonymous and file-backed resident memory (sampled every
0.1 s), the bytes the images and the embedding themselves take, and with a
limit, how it was enforced and the cgroup's own peak (page cache included).
Reading them: anonymous memory is what a limit cannot reclaim; the cgroup's
peak sits at the limit once the mapped file's pages are being recycled
(times_limit_reached > 0); RSS can exceed the limit a little, because shared
libraries already cached by other processes are resident here but charged to
the cgroup that first read them.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import threading
import time

import numpy as np

from benchmarks import memory_limit
from benchmarks.output import emit

_WRITE_ROWS = 10000


def _layers(text: str):
  return tuple(int(l) if l.isdigit() else l for l in text.split(","))


def _random_images(rng, n: int, shape):
  for start in range(0, n, _WRITE_ROWS):  # in slices: no float temporary, no whole copy
    yield rng.integers(0, 256, (min(_WRITE_ROWS, n - start), *shape), dtype=np.uint8)


def write_stream_dir(directory: str, n: int, shape, classes: int) -> None:
  """images.npy / labels.npy of random data, written slice by slice, then dropped
  from the page cache so the measured process reads them from disk."""
  os.makedirs(directory)
  rng = np.random.default_rng(0)
  np.save(os.path.join(directory, "labels.npy"), rng.integers(0, classes, n))
  path = os.path.join(directory, "images.npy")
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)})
    for block in _random_images(rng, n, shape):
      f.write(block.tobytes())
    f.flush()
    os.fsync(f.fileno())
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


class _PeakResident:
  """Samples this process's resident anonymous and file-backed memory (/proc)."""

  def __init__(self):
    self.peak = {"RssAnon": 0, "RssFile": 0}
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()

  def _run(self):
    while not self._stop.wait(0.1):
      with open("/proc/self/status") as f:
        for line in f:
          key, _, value = line.partition(":")
          if key in self.peak:
            self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)

  def stop(self) -> dict:
    self._stop.set()
    self._thread.join()
    return {"peak_anon_mb": self.peak["RssAnon"] / 2**20,
            "peak_file_mb": self.peak["RssFile"] / 2**20}


def measure(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top  (not needed by the parent)
  from vpntk_jax.data import load_dataset, make_dataset  # pylint: disable=g-import-not-at-top
  from vpntk_jax.features import NTKFeatureMap, ntk  # pylint: disable=g-import-not-at-top
  from vpntk_jax.stages import mean_embedding  # pylint: disable=g-import-not-at-top
  sampler = _PeakResident()
  shape = (args.size, args.size, args.channels)
  if args.stream:
    private = load_dataset(f"npy:{args.stream}", num_classes=args.classes)
  else:
    images = np.empty((args.n, *shape), np.uint8)
    rng = np.random.default_rng(0)
    for start, block in zip(range(0, args.n, _WRITE_ROWS), _random_images(rng, args.n, shape)):
      images[start:start + len(block)] = block
    private = make_dataset(images, rng.integers(0, args.classes, args.n), args.classes)
  features = NTKFeatureMap(ntk.NTKNetwork(_layers(args.layers)), input_dim=int(np.prod(shape)),
                           chunk_size=args.chunk)
  t0 = time.perf_counter()
  total = mean_embedding.private_embedding_sum(features, private, quiet=True)
  jax.block_until_ready(total)
  seconds = time.perf_counter() - t0
  num_params = ntk.num_params(features.params)
  return {
      "benchmark": "embedding_scale", "n": len(private), "image_shape": private.image_shape,
      "source": "memory-mapped .npy (npy:DIR)" if args.stream else "random array in RAM",
      "layers": args.layers, "num_params": num_params, "classes": args.classes,
      "chunk": args.chunk, "seconds": seconds, "examples_per_s": len(private) / seconds,
      "images_mb": private.images.nbytes / 2**20,
      "embedding_mb_float32": num_params * args.classes * 4 / 2**20,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      **sampler.stop(), "device": jax.devices()[0].device_kind,
  }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=200000)
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--channels", type=int, default=3)
  parser.add_argument("--classes", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=1024)
  parser.add_argument("--layers", default="3000,relu,200,layernorm,1")
  parser.add_argument("--stream", metavar="DIR", help="stream the npy source DIR (written "
                      "with --n random images if absent, then deleted)")
  parser.add_argument("--memory-limit-mb", type=int, help="run under this cgroup limit")
  parser.add_argument("--json", help="also write the JSON object to this file")
  parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure_only:  # the child run_limited starts
    print(json.dumps(measure(args)))
    return
  created = bool(args.stream) and not os.path.exists(args.stream)
  if created:
    write_stream_dir(args.stream, args.n, (args.size, args.size, args.channels), args.classes)
  try:
    if args.memory_limit_mb:
      child = [sys.executable, "-m", "benchmarks.embedding_scale", *sys.argv[1:],
               "--measure-only"]
      done, limit = memory_limit.run_limited(child, args.memory_limit_mb * 2**20)
      if done.returncode != 0:
        raise SystemExit(f"the measured process failed (exit {done.returncode}; -9: "
                         f"killed, e.g. at the memory limit); {limit}")
      result = {**json.loads(done.stdout.strip().splitlines()[-1]), "memory_limit": limit}
    else:
      result = {**measure(args), "memory_limit": None}
    if args.stream:
      result["file_mb"] = os.path.getsize(os.path.join(args.stream, "images.npy")) / 2**20
  finally:
    if created:
      shutil.rmtree(args.stream)
  emit(result, args.json)


if __name__ == "__main__":
  main()
