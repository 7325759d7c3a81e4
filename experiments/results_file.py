"""The JSON files under experiments/results/: one record per run name."""

import json
import os

from vpntk_jax import io_utils


def read_results(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def merge_result(path: str, name: str, record: dict) -> dict:
  """Adds one record, re-reading the file first so concurrent scripts do not drop rows."""
  results = read_results(path)
  results[name] = record
  io_utils.write_json_atomic(path, results)
  return results
