"""Exponential moving average of parameters (PrivImage and DPDM sample from it, decay 0.999)."""

from __future__ import annotations

import optax


def ema_update(ema_params, params, decay: float):
  """decay * ema_params + (1 - decay) * params, leaf by leaf (optax.incremental_update).

  A pure pytree function: jit it with the step. Start the average at the
  initial (or pretrained) parameters. Under DP-SGD it is post-processing of
  the released noisy updates, so it costs no privacy.
  """
  return optax.incremental_update(params, ema_params, 1.0 - decay)


def ema_decay_at(step: int, decay: float) -> float:
  """The decay of update number `step` (0-based): min(decay, (1 + step) / (10 + step)),
  so a short run's average is not dominated by its starting point (the usual
  warm-up of an EMA; a run of a few hundred steps at 0.999 would otherwise keep
  most of its initial weights)."""
  return min(float(decay), (1.0 + step) / (10.0 + step))
