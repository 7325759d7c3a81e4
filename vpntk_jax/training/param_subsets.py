"""A parameter tree split in two by the names of its leaves, and joined again.

Parameter-efficient fine-tuning trains a subset (`selected`) with the rest
frozen: the trainer sees only the subset, the model the whole tree. Names are
the leaves' paths joined by "/" ("ResBlock_3/affine/kernel").
"""

from __future__ import annotations

from typing import Any, Callable

from flax import traverse_util


def split(params: Any, selected: Callable[[str], bool]) -> tuple[dict, dict]:
  """(the leaves whose path `selected` accepts, the others), each a nested dict."""
  flat = traverse_util.flatten_dict(params, sep="/")
  chosen = {k: v for k, v in flat.items() if selected(k)}
  rest = {k: v for k, v in flat.items() if not selected(k)}
  return (traverse_util.unflatten_dict(chosen, sep="/"),
          traverse_util.unflatten_dict(rest, sep="/"))


def join(chosen: Any, rest: Any) -> dict:
  """The tree `split` took apart."""
  flat = {**traverse_util.flatten_dict(rest, sep="/"),
          **traverse_util.flatten_dict(chosen, sep="/")}
  return traverse_util.unflatten_dict(flat, sep="/")


def count(params: Any) -> int:
  return sum(int(v.size) for v in traverse_util.flatten_dict(params, sep="/").values())
