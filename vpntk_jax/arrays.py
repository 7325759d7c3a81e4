"""Host-side array helpers shared by the pipeline stages."""

from __future__ import annotations

import mmap

import numpy as np


def padded_chunk(array: np.ndarray, rows: np.ndarray, chunk_size: int):
  """array[rows] zero-padded to `chunk_size` rows, and a 0/1 float32 mask of the real rows.

  Fixed-size chunks keep one compiled program for any dataset size; padding
  rows get weight 0 in sums and are cut from per-row outputs.
  """
  chunk = np.zeros((chunk_size,) + array.shape[1:], array.dtype)
  chunk[:len(rows)] = array[rows]
  return chunk, (np.arange(chunk_size) < len(rows)).astype(np.float32)


def consecutive_rows(num_rows: int, chunk_size: int):
  """Index arrays of consecutive chunks of at most `chunk_size` rows."""
  for start in range(0, num_rows, chunk_size):
    yield np.arange(start, min(start + chunk_size, num_rows))


def is_memory_mapped(array: np.ndarray) -> bool:
  """Whether `array` is (a view of) a memory-mapped file (`data.npy`): a whole copy of
  it would read the file into memory, which chunked reads avoid."""
  base = array
  while base is not None:
    if isinstance(base, (np.memmap, mmap.mmap)):
      return True
    base = getattr(base, "base", None)
  return False
