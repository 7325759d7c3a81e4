"""The run's privacy record, written as privacy.json.

Every Gaussian release computed from the private data is recorded, including releases
that were later replaced ("superseded"): those were computed from the same data and
still count towards the privacy spent.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
from collections.abc import Sequence
from typing import Any

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.io_utils import write_json_atomic
from vpntk_jax.privacy.accounting import (
    check_accountant,
    check_adjacency,
    check_epsilon_delta,
    epsilon_of,
)

SCHEMA_VERSION = 1
STATUSES = ("active", "superseded")
# Root finders behind the accountants stop at ~1e-12 relative; the budget check should
# not flip on that.
_BUDGET_RTOL = 1e-9
# Record fields older ledgers may lack.
_OPTIONAL_FIELDS = ("status", "notes", "sha256", "granularity", "num_examples_source",
                    "mechanism", "dp_event", "sampling_rate", "steps", "clip_norm")


def utc_now() -> str:
  """Current UTC time as an ISO-8601 string (seconds precision)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _encode_float(x: float) -> float | str:
  # Strict JSON has no inf/NaN; a sigma=0 (non-private) release has epsilon inf.
  return x if math.isfinite(x) else str(x)


def _single_or_list(values: Sequence[Any]) -> Any:
  if not values:
    return None
  return values[0] if len(values) == 1 else list(values)


def dp_event_lib():
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  return dp_event


@dataclasses.dataclass(frozen=True)
class ReleaseRecord:
  """One noisy release of a statistic of the private data."""

  name: str
  sensitivity: float
  sigma: float
  noise_std: float
  adjacency: str
  accountant: str
  epsilon: float
  delta: float
  num_private_examples: int
  noise_seed: int | None
  shape: tuple[int, ...]
  created_utc: str
  status: str = "active"
  notes: str = ""
  # `release.array_digest` of the released array as stored; None in records written
  # before digests were kept.
  sha256: str | None = None
  # Step g of the lattice the noise was drawn on (`noise.Lattice`); None in records
  # written with the earlier float32 sampler.
  granularity: float | None = None
  # Where num_private_examples comes from: public (replace-one), declared, or a
  # noisy release; None in records written before it was kept.
  num_examples_source: str | None = None
  # "gaussian": one Gaussian release (its event is Gaussian(sigma)). Other
  # mechanisms (DP-SGD's subsampled steps) carry their dp-accounting event
  # (`subsampled.event_to_json`, dp-accounting's units for the ledger's
  # adjacency) and the settings it was built from.
  mechanism: str = "gaussian"
  dp_event: dict | None = None
  sampling_rate: float | None = None
  steps: int | None = None
  clip_norm: float | None = None

  def __post_init__(self) -> None:
    check_adjacency(self.adjacency)
    check_accountant(self.accountant)
    if self.status not in STATUSES:
      raise ConfigError(f"release status must be one of {STATUSES}, got {self.status!r}")
    if not (self.sensitivity > 0 and self.sigma >= 0):
      raise ConfigError(
          f"release {self.name!r}: need sensitivity > 0 and sigma >= 0, "
          f"got {self.sensitivity!r} and {self.sigma!r}")
    if self.mechanism != "gaussian" and self.dp_event is None:
      raise ConfigError(f"release {self.name!r} ({self.mechanism}) has no dp_event: its "
                        f"epsilon cannot be derived, so the record is refused")
    # Keeps the tuple type through dataclasses.replace and JSON round trips.
    object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

  def event(self):
    """This record's dp-accounting event under the ledger's adjacency."""
    from vpntk_jax.privacy import subsampled  # pylint: disable=g-import-not-at-top
    if self.dp_event is not None:
      return subsampled.event_from_json(self.dp_event)
    events = subsampled.gaussian_events([self.sigma], adjacency=self.adjacency)
    return events[0] if events else dp_event_lib().NoOpDpEvent()

  @classmethod
  def make(
      cls, name: str, *, sensitivity: float, sigma: float, adjacency: str, accountant: str,
      epsilon: float, delta: float, num_private_examples: int, noise_seed: int | None,
      shape: Sequence[int], status: str = "active", notes: str = "", sha256: str | None = None,
      granularity: float | None = None, num_examples_source: str | None = None,
      **mechanism: Any,
  ) -> ReleaseRecord:
    """Builds a record, deriving noise_std and stamping the current UTC time."""
    return cls(
        name=name, sensitivity=float(sensitivity), sigma=float(sigma),
        noise_std=float(sensitivity) * float(sigma), adjacency=adjacency,
        accountant=accountant, epsilon=float(epsilon), delta=float(delta),
        num_private_examples=int(num_private_examples), noise_seed=noise_seed,
        shape=tuple(shape), created_utc=utc_now(), status=status, notes=notes, sha256=sha256,
        granularity=granularity, num_examples_source=num_examples_source, **mechanism)

  def to_json(self) -> dict:
    """JSON-ready dict (inf/NaN floats as strings)."""
    d = dataclasses.asdict(self)
    d["shape"] = list(self.shape)
    for key in ("sensitivity", "sigma", "noise_std", "epsilon", "delta"):
      d[key] = _encode_float(d[key])
    return d

  @classmethod
  def from_json(cls, d: dict) -> ReleaseRecord:
    """Inverse of `to_json`."""
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = fields - set(d) - set(_OPTIONAL_FIELDS)
    if missing:
      raise ConfigError(f"release record is missing {sorted(missing)}")
    kwargs = {k: v for k, v in d.items() if k in fields}
    for key in ("sensitivity", "sigma", "noise_std", "epsilon", "delta"):
      kwargs[key] = float(kwargs[key])
    kwargs["shape"] = tuple(kwargs["shape"])
    kwargs["num_private_examples"] = int(kwargs["num_private_examples"])
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class PrivacyLedger:
  """The privacy budget of a run and every release charged against it."""

  epsilon: float
  delta: float
  accountant: str
  adjacency: str
  releases: tuple[ReleaseRecord, ...] = ()

  def __post_init__(self) -> None:
    check_epsilon_delta(self.epsilon, self.delta)
    check_accountant(self.accountant)
    check_adjacency(self.adjacency)
    object.__setattr__(self, "releases", tuple(self.releases))

  def add(self, record: ReleaseRecord) -> PrivacyLedger:
    """Returns a new ledger with `record` appended."""
    # Sensitivities under different adjacencies are not comparable, so a mixed total
    # would mean nothing.
    if record.adjacency != self.adjacency:
      raise ConfigError(
          f"release {record.name!r} uses adjacency {record.adjacency!r}, "
          f"the ledger {self.adjacency!r}")
    return dataclasses.replace(self, releases=self.releases + (record,))

  def merge(self, other: PrivacyLedger) -> PrivacyLedger:
    """This ledger plus every release of `other` it does not hold yet (the same
    release, copied between ledgers, is counted once)."""
    def key(r: ReleaseRecord):
      return (r.name, r.created_utc, r.sha256, r.sigma)
    known = {key(r) for r in self.releases}
    merged = self
    for record in other.releases:
      if key(record) not in known:
        merged, known = merged.add(record), known | {key(record)}
    return merged

  def supersede_active(self, notes: str = "") -> PrivacyLedger:
    """Returns a new ledger with every active release marked superseded (still charged)."""
    def mark(r: ReleaseRecord) -> ReleaseRecord:
      if r.status != "active":
        return r
      return dataclasses.replace(r, status="superseded", notes=notes or r.notes)
    return dataclasses.replace(self, releases=tuple(mark(r) for r in self.releases))

  @property
  def active_releases(self) -> tuple[ReleaseRecord, ...]:
    return tuple(r for r in self.releases if r.status == "active")

  def total_epsilon(self) -> float:
    """Epsilon at self.delta of ALL releases composed (superseded ones included)."""
    if not self.releases:
      return 0.0
    accountant = self.accountant
    if accountant == "analytic" and len(self.releases) > 1:
      accountant = "pld"  # the analytic formula covers one release only
    if all(r.dp_event is None for r in self.releases):
      return epsilon_of([r.sigma for r in self.releases], self.delta, accountant=accountant)
    from vpntk_jax.privacy import subsampled  # pylint: disable=g-import-not-at-top
    return subsampled.event_epsilon(self.event(), self.delta, adjacency=self.adjacency,
                                    accountant=accountant)

  def event(self):
    """Every release composed, as one dp-accounting event (see `to_json`).

    Records of the same repeated step (DP-SGD charged chunk by chunk: each a
    SelfComposed(step, n)) are merged into one SelfComposed(step, total n), at the
    place of the first: the same event, which the accountant composes in one
    pass, so a run charged in chunks has the epsilon it was calibrated for.
    """
    return dp_event_lib().ComposedDpEvent(merge_repeated([r.event() for r in self.releases]))

  def within_budget(self) -> bool:
    """Whether the composed epsilon stays within the ledger's epsilon."""
    return self.total_epsilon() <= self.epsilon * (1.0 + _BUDGET_RTOL)

  def to_json(self) -> dict:
    """The privacy.json document; sigma/sensitivity/num_private_examples describe the
    active release (a list when several are active, None when none is)."""
    active = self.active_releases
    total = self.total_epsilon()
    seeded = sorted({r.noise_seed for r in self.releases if r.noise_seed is not None})
    headline = {}
    if seeded:
      headline["not_private_while_seed_known"] = (
          f"noise drawn from the fixed seed(s) {seeded}: anyone who knows a seed can remove "
          f"its noise, so the releases are not private while the seed is known (seeds are "
          f"for tests and public data)")
    return {
        **headline,
        "schema_version": SCHEMA_VERSION,
        "epsilon": self.epsilon,
        "delta": self.delta,
        "sigma": _single_or_list([r.sigma for r in active]),
        "noise_std": _single_or_list([r.noise_std for r in active]),
        "sensitivity": _single_or_list([r.sensitivity for r in active]),
        "accountant": self.accountant,
        "adjacency": self.adjacency,
        "num_private_examples": _single_or_list(
            sorted({r.num_private_examples for r in active})),
        "num_private_examples_source": _single_or_list(
            sorted({r.num_examples_source for r in active if r.num_examples_source})),
        "num_releases": len(self.releases),
        "total_epsilon": _encode_float(total),
        "within_budget": total <= self.epsilon * (1.0 + _BUDGET_RTOL),
        # Re-derivable with dp-accounting alone: compose this event in an
        # accountant for this neighbouring relation and ask for epsilon at delta.
        "neighboring_relation": _relation_name(self.adjacency),
        "dp_event": _event_json(self) if self.releases else None,
        "releases": [r.to_json() for r in self.releases],
    }

  @classmethod
  def from_json(cls, d: dict) -> PrivacyLedger:
    """Rebuilds a ledger from `to_json` output; derived fields are recomputed, not trusted."""
    version = d.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
      raise ConfigError(f"unsupported privacy.json schema_version {version!r}")
    try:
      return cls(
          epsilon=float(d["epsilon"]), delta=float(d["delta"]),
          accountant=d["accountant"], adjacency=d["adjacency"],
          releases=tuple(ReleaseRecord.from_json(r) for r in d.get("releases", ())))
    except KeyError as e:
      raise ConfigError(f"privacy record is missing {e.args[0]!r}") from None


def merge_repeated(events: list) -> list:
  """`events` with every SelfComposed(e, n) of the same e merged into one, at the place
  of the first; other events stay as they are."""
  lib = dp_event_lib()
  merged: list = []
  position: dict = {}
  for event in events:
    if isinstance(event, lib.SelfComposedDpEvent):
      key = repr(event.event)
      if key in position:
        i = position[key]
        merged[i] = lib.SelfComposedDpEvent(event.event, merged[i].count + event.count)
        continue
      position[key] = len(merged)
    merged.append(event)
  return merged


def _relation_name(adjacency: str) -> str:
  from vpntk_jax.privacy import subsampled  # pylint: disable=g-import-not-at-top
  return subsampled.NEIGHBORING_RELATIONS[adjacency].name


def _event_json(ledger: PrivacyLedger) -> dict | None:
  from vpntk_jax.privacy import subsampled  # pylint: disable=g-import-not-at-top
  try:
    return subsampled.event_to_json(ledger.event())
  except DataError:
    return None  # a sigma-0 (non-private) release has no finite event to store


def write_ledger(path: str | os.PathLike, ledger: PrivacyLedger) -> None:
  """Writes `ledger` to `path` (normally <run>/privacy.json) atomically."""
  write_json_atomic(path, ledger.to_json())


def read_ledger(path: str | os.PathLike) -> PrivacyLedger:
  """Reads a ledger written by `write_ledger`."""
  with open(path, encoding="utf-8") as f:
    return PrivacyLedger.from_json(json.load(f))
