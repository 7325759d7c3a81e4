"""The release protocol as a plan: what one mechanism releases, with which
sensitivity and noise, and the ledger records that describe it.

Built from plain values (no arrays, no JAX), so the run, `vpntk audit` and
anyone re-deriving a ledger compute the same sigma for the same settings.
"""

from __future__ import annotations

import dataclasses

from vpntk_jax.privacy import accounting
from vpntk_jax.privacy.ledger import PrivacyLedger, ReleaseRecord
from vpntk_jax.privacy.noise import Lattice


@dataclasses.dataclass(frozen=True)
class ReleasePlan:
  """Gaussian releases of one statistic, calibrated together for (epsilon, delta).

  `scales` maps each release's ledger name to its noise relative to the first
  (e.g. a validation copy 10x noisier); `sigmas` are their noise multipliers,
  calibrated for their composition; every release has noise std
  sensitivity * sigma.
  """
  epsilon: float
  delta: float
  accountant: str
  adjacency: str
  num_examples: int
  sensitivity: float
  sigmas: dict[str, float]
  noise_seed: int | None = None

  @classmethod
  def for_mean(cls, *, scales: dict[str, float], num_examples: int, norm_bound: float,
               epsilon: float, delta: float, accountant: str, adjacency: str,
               noise_seed: int | None = None) -> "ReleasePlan":
    """Releases of the mean of `num_examples` terms of norm <= `norm_bound`."""
    sensitivity = accounting.mean_embedding_sensitivity(num_examples, adjacency,
                                                        norm_bound=norm_bound)
    sigmas = accounting.calibrate_composition(epsilon, delta, list(scales.values()),
                                              accountant=accountant)
    return cls(epsilon=epsilon, delta=delta, accountant=accountant, adjacency=adjacency,
               num_examples=num_examples, sensitivity=sensitivity,
               sigmas=dict(zip(scales, sigmas)), noise_seed=noise_seed)

  def noise_std(self, name: str) -> float:
    """Noise std of release `name` before the lattice's (at most 1/1024) share."""
    return self.sensitivity * self.sigmas[name]

  def record(self, name: str, *, shape, sha256: str, notes: str,
             lattice: Lattice | None = None,
             num_examples_source: str | None = None) -> ReleaseRecord:
    """The ledger record of release `name`, once its array (digest `sha256`) exists.

    With the lattice it was drawn on, the record's sensitivity is the lattice's
    (the exact one plus the rounding's share), which its noise was scaled to.
    """
    return ReleaseRecord.make(
        name, sensitivity=lattice.effective_sensitivity if lattice else self.sensitivity,
        sigma=self.sigmas[name], adjacency=self.adjacency, accountant=self.accountant,
        epsilon=self.epsilon, delta=self.delta, num_private_examples=self.num_examples,
        noise_seed=self.noise_seed, shape=shape, sha256=sha256, notes=notes,
        granularity=lattice.granularity if lattice else None,
        num_examples_source=num_examples_source)

  def empty_ledger(self, prior: PrivacyLedger | None = None) -> PrivacyLedger:
    """A ledger for this budget that keeps charging every release of `prior` (a run
    this one replaces)."""
    ledger = PrivacyLedger(epsilon=self.epsilon, delta=self.delta, accountant=self.accountant,
                           adjacency=self.adjacency)
    for record in (prior.releases if prior is not None else ()):
      ledger = ledger.add(dataclasses.replace(
          record, status="superseded",
          notes=record.notes or "from the run this one replaced (--force); still charged"))
    return ledger
