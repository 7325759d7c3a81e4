"""Per-example randomness that no adversary can reproduce and no neighbour can move.

DP-SGD's diffusion draws and DPAgg-TI's inversions use randomness per private
example. Two things must hold for their sensitivity bounds:

1. It is secret. An adversary who knows every record but one, and every stored
   file (config.json holds the run's seed), must not be able to compute the other
   records' contributions; otherwise the noise hides less than the accounting
   assumes. The key therefore comes from the run's noise stream
   (`privacy.noise.noise_rng`: OS entropy unless a noise seed is fixed, which makes
   the run NOT PRIVATE).
2. It follows the record, not its position. If record j's key depended on its
   row, inserting a record at row 0 (or re-sorting a folder by class after a
   replacement) would change every later record's contribution, and the sum
   would move by far more than one record's bound. Here a record's key is a
   keyed function of the record itself: fold_in(secret key, fingerprint of its
   bytes and label). Given the secret, each record's contribution is a fixed
   function of that record alone, so a sum over records has the sensitivity of
   one term for any input and any position; the mechanism is a mixture over
   secret keys of mechanisms with that sensitivity.

Fingerprints are 64-bit BLAKE2b digests of the image bytes and the label. They
are computed from private data and never stored or logged; they only feed the
keyed function.
"""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax.privacy.noise import EXAMPLE_KEY_STREAM, generator, noise_rng


def run_key(noise_seed: int | None) -> jax.Array:
  """The run's secret key of per-example randomness (None: from OS entropy)."""
  return secret_key(noise_seed, (EXAMPLE_KEY_STREAM,))


def secret_key(noise_seed: int | None, stream: tuple[int, ...]) -> jax.Array:
  """A JAX key drawn from stream `stream` of the run's noise seed (None: OS entropy)."""
  shape = jax.random.key_data(jax.random.key(0)).shape  # the default PRNG's key words
  words = generator(noise_rng(noise_seed, stream)).integers(0, 2**32, size=shape,
                                                            dtype=np.uint32)
  return jax.random.wrap_key_data(jnp.asarray(words, jnp.uint32))


def fingerprints(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """(n, 2) uint32: each record's 64-bit digest of (label, image bytes)."""
  images = np.ascontiguousarray(images)
  labels = np.asarray(labels, np.int64)
  out = np.empty((len(labels), 2), np.uint32)
  for i in range(len(labels)):
    h = hashlib.blake2b(labels[i].tobytes(), digest_size=8)
    h.update(images[i].tobytes())
    out[i] = np.frombuffer(h.digest(), np.uint32)
  return out


@jax.jit
def keyed(key: jax.Array, prints: jax.Array) -> jax.Array:
  """One key per fingerprint row: a function of `key` and that row alone."""
  return jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, p[0]), p[1]))(prints)


def record_keys(key: jax.Array, images: np.ndarray, labels: np.ndarray) -> jax.Array:
  """The per-example keys of these records under `key`; independent of their order."""
  return keyed(key, jnp.asarray(fingerprints(images, labels)))


def step_keys(key: jax.Array, step: int, images: np.ndarray, labels: np.ndarray) -> jax.Array:
  """DP-SGD's per-example keys at `step`: fresh each step, each a function of the
  secret, the step and the record alone."""
  return record_keys(jax.random.fold_in(key, step), images, labels)
