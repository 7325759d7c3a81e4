"""The Gaussian mechanism applied to a statistic (e.g. a mean embedding)."""

from __future__ import annotations

import hashlib
import math
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax.errors import ConfigError, DataError

_MAX_SEED = 2**32


def noise_key(seed: int | None) -> jax.Array:
  """PRNG key for privacy noise.

  `None` draws the key from OS entropy (the default for real releases: noise must not be
  reproducible from anything stored with the run, in particular not from the training
  seed). An int gives `jax.random.key(seed)`, for tests and debugging only.
  """
  if seed is None:
    # Fill the whole key, not a 32-bit seed, so every key bit is OS entropy.
    template = jax.random.key_data(jax.random.key(0))
    raw = os.urandom(template.size * template.dtype.itemsize)
    data = np.frombuffer(raw, dtype=template.dtype).reshape(template.shape)
    return jax.random.wrap_key_data(data)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ConfigError(f"noise seed must be an integer or None, got {seed!r}")
  # jax.random.key silently keeps only the low 32 bits without x64, so distinct larger
  # seeds would collide; refuse them rather than reuse noise.
  if not 0 <= int(seed) < _MAX_SEED:
    raise ConfigError(f"noise seed must be in [0, 2**32), got {seed!r}")
  return jax.random.key(int(seed))


def gaussian_release(
    statistic: jax.Array, *, sensitivity: float, sigma: float, key: jax.Array
) -> jax.Array:
  """Returns statistic + N(0, (sensitivity * sigma)^2) noise, drawn independently per entry.

  `sigma` is the noise multiplier from `accounting`. sigma == 0 returns the statistic
  unchanged with a warning: useful for non-private debugging, never a private release.
  """
  sensitivity = float(sensitivity)
  sigma = float(sigma)
  if not (math.isfinite(sensitivity) and sensitivity > 0):
    raise ConfigError(f"sensitivity must be finite and > 0, got {sensitivity!r}")
  if not (math.isfinite(sigma) and sigma >= 0):
    raise ConfigError(f"noise multiplier sigma must be finite and >= 0, got {sigma!r}")
  statistic = jnp.asarray(statistic)
  # A NaN/inf statistic would come out NaN/inf whatever the noise: an upstream bug
  # (e.g. unbounded features) that must not be published silently.
  if not bool(jnp.all(jnp.isfinite(statistic))):
    raise DataError("the statistic to release contains NaN or inf; refusing to release it")
  if sigma == 0:
    warnings.warn(
        "gaussian_release with sigma=0: the statistic is released WITHOUT noise and is "
        "NOT differentially private", UserWarning, stacklevel=2)
    return statistic
  noise = jax.random.normal(key, statistic.shape, dtype=jnp.float32)
  return statistic + noise * jnp.float32(sensitivity * sigma)


def array_digest(array: np.ndarray) -> str:
  """sha256 of an array's dtype, shape and bytes: the fingerprint a ledger keeps of a release."""
  array = np.ascontiguousarray(array)
  h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
  h.update(array.tobytes())
  return h.hexdigest()
