"""PrivImage's semantic query: which public classes look like each private class.

A public classifier (trained on the public pool only) scores every private
image; the image adds one vote to each of its top-k public classes in its own
private class's row of a (private classes x public classes) histogram. The
histogram is released once with Gaussian noise; the selection of public classes
per private class is post-processing of that release.

Sensitivity: the k votes of one image fall in k distinct cells of one row, so
adding or removing an image moves the histogram by sqrt(k) in L2, and replacing
one (its k votes leave one row, k others arrive in another) by sqrt(2k).
"""

from __future__ import annotations

import math

import numpy as np

from vpntk_jax.errors import ConfigError

RELEASE_NAME = "semantic_query_histogram"


def check_top_k(k: int, num_public_classes: int) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ConfigError(f"the semantic query's top-k must be an integer >= 1, got {k!r}")
  if k > num_public_classes:
    raise ConfigError(f"the semantic query's top-k ({k}) exceeds the public classifier's "
                      f"{num_public_classes} classes")
  return int(k)


def histogram_sensitivity(k: int, adjacency: str) -> float:
  """L2 sensitivity of the vote histogram for top-k votes."""
  if adjacency == "add_remove":
    return math.sqrt(k)
  if adjacency == "replace_one":
    return math.sqrt(2 * k)
  raise ConfigError(f"unknown adjacency {adjacency!r}")


def top_k_classes(logits: np.ndarray, k: int) -> np.ndarray:
  """(n, k) indices of each row's k largest scores (ties: the lower index first), so
  every image votes for exactly k distinct classes."""
  logits = np.asarray(logits)
  check_top_k(k, logits.shape[1])
  # A stable sort on the negated scores breaks ties by index, deterministically.
  return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def vote_histogram(private_labels: np.ndarray, votes: np.ndarray, num_private_classes: int,
                   num_public_classes: int) -> np.ndarray:
  """(private classes, public classes) float64 counts: row y gets one vote at each of
  the top-k public classes of every private image labelled y."""
  private_labels = np.asarray(private_labels)
  votes = np.asarray(votes)
  if votes.ndim != 2 or votes.shape[0] != private_labels.shape[0]:
    raise ConfigError(f"votes must be (n, k) for n = {private_labels.shape[0]} images, got "
                      f"{votes.shape}")
  hist = np.zeros((num_private_classes, num_public_classes), np.float64)
  rows = np.repeat(private_labels, votes.shape[1])
  np.add.at(hist, (rows, votes.reshape(-1)), 1.0)
  return hist


def select_public_classes(noisy_histogram: np.ndarray, per_class: int) -> np.ndarray:
  """(private classes, per_class) public classes, chosen class by class: each
  private class takes its highest-voted public classes not already taken by an
  earlier private class. Post-processing of the released histogram."""
  hist = np.asarray(noisy_histogram, np.float64)
  num_private, num_public = hist.shape
  if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) \
      or per_class < 1:
    raise ConfigError(f"public classes per private class must be an integer >= 1, got "
                      f"{per_class!r}")
  if num_private * per_class > num_public:
    raise ConfigError(f"the public pool has {num_public} classes; {num_private} private "
                      f"classes x {per_class} each need {num_private * per_class}")
  taken = np.zeros(num_public, bool)
  chosen = np.empty((num_private, per_class), np.int64)
  for c in range(num_private):
    order = np.argsort(-hist[c], kind="stable")
    free = order[~taken[order]][:per_class]
    chosen[c] = free
    taken[free] = True
  return chosen


def relabel_public(public_labels: np.ndarray, selection: np.ndarray) -> tuple[np.ndarray,
                                                                               np.ndarray]:
  """(row indices into the public pool, their private-class labels) of the public
  examples whose class was selected; the rest of the pool is dropped."""
  public_labels = np.asarray(public_labels)
  to_private = np.full(int(max(public_labels.max(), selection.max())) + 1, -1, np.int64)
  for private_class, public_classes in enumerate(selection):
    to_private[public_classes] = private_class
  mapped = to_private[public_labels]
  keep = np.flatnonzero(mapped >= 0)
  return keep, mapped[keep].astype(np.int32)
