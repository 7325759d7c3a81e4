"""PrivImage's semantic query: the vote histogram, its sensitivity, the selection."""

import itertools

import numpy as np
import pytest

from vpntk_jax.errors import ConfigError
from vpntk_jax.stages import semantic_query as sq


def _hist(labels, logits, k, num_private=3):
  return sq.vote_histogram(labels, sq.top_k_classes(logits, k), num_private, logits.shape[1])


@pytest.mark.parametrize("k", [1, 3, 5])
def test_sensitivity_holds_by_brute_force(k):
  rng = np.random.default_rng(k)
  # Ties included: integer scores from a small range.
  logits = rng.integers(0, 3, (12, 7)).astype(np.float64)
  labels = rng.integers(0, 3, 12)
  base = _hist(labels, logits, k)
  worst_remove, worst_replace = 0.0, 0.0
  for i in range(12):
    keep = np.arange(12) != i
    worst_remove = max(worst_remove, np.linalg.norm(base - _hist(labels[keep], logits[keep], k)))
    for new_label, new_logits in itertools.product(range(3), rng.normal(size=(4, 7))):
      lbl, lgt = labels.copy(), logits.copy()
      lbl[i], lgt[i] = new_label, new_logits
      worst_replace = max(worst_replace, np.linalg.norm(base - _hist(lbl, lgt, k)))
  assert worst_remove <= sq.histogram_sensitivity(k, "add_remove")
  assert worst_replace <= sq.histogram_sensitivity(k, "replace_one")
  # Both bounds are reached: they are tight, not loose.
  assert worst_remove == pytest.approx(np.sqrt(k))
  assert worst_replace == pytest.approx(np.sqrt(2 * k))


def test_each_image_votes_for_k_distinct_classes_even_with_ties():
  votes = sq.top_k_classes(np.zeros((4, 6)), 3)
  assert all(len(set(row)) == 3 for row in votes)
  np.testing.assert_array_equal(votes[0], [0, 1, 2])
  hist = sq.vote_histogram(np.array([0, 0, 1, 1]), votes, 2, 6)
  assert hist.sum() == 12 and hist.max() == 2


def test_selection_takes_each_row_s_best_free_classes():
  hist = np.array([[9.0, 8.0, 1.0, 0.0, 0.0, 0.0],
                   [9.5, 0.0, 7.0, 6.0, 0.0, 0.0]])
  selection = sq.select_public_classes(hist, 2)
  np.testing.assert_array_equal(selection, [[0, 1], [2, 3]])  # 0 was taken by row 0
  keep, labels = sq.relabel_public(np.array([0, 4, 3, 1, 2, 5]), selection)
  np.testing.assert_array_equal(keep, [0, 2, 3, 4])
  np.testing.assert_array_equal(labels, [0, 1, 0, 1])


def test_bad_settings_are_named():
  with pytest.raises(ConfigError, match="exceeds"):
    sq.top_k_classes(np.zeros((2, 3)), 4)
  with pytest.raises(ConfigError, match=">= 1"):
    sq.top_k_classes(np.zeros((2, 3)), 0)
  with pytest.raises(ConfigError, match="need 6"):
    sq.select_public_classes(np.zeros((3, 5)), 2)
  with pytest.raises(ConfigError, match="adjacency"):
    sq.histogram_sensitivity(2, "swap")
