"""Epsilon of a privacy.json with dp-accounting alone: the tests' own reading of the
file, sharing no code with the library (as a user would re-derive it)."""

import collections
import json

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation


def _named(value):
  """JSON -> the namedtuples dp_event.DpEvent.from_named_tuple reads."""
  if isinstance(value, dict):
    return collections.namedtuple("E", list(value))(**{k: _named(v) for k, v in value.items()})
  if isinstance(value, list):
    return [_named(v) for v in value]
  return value


def rederive_epsilon(privacy) -> float:
  """Epsilon at the file's delta of its composed `dp_event` under its
  `neighboring_relation`; `privacy` is the parsed document or a path to it."""
  doc = privacy if isinstance(privacy, dict) else json.loads(open(privacy).read())
  accountant = pld_privacy_accountant.PLDAccountant(
      NeighboringRelation[doc["neighboring_relation"]], value_discretization_interval=1e-4)
  accountant.compose(dp_event.DpEvent.from_named_tuple(_named(doc["dp_event"])))
  return accountant.get_epsilon(doc["delta"])
