"""A related public/private pairing made from FashionMNIST alone, for VP-NTK.

    python -m experiments.fashion_split        # writes data/fashion_split/{public,private}.npz

The MNIST -> FashionMNIST pairing asks a digit generator to draw clothes. The
paper's setting has public models of the same kind of images as the private
ones. Offline, the closest real stand-in is a disjoint split of FashionMNIST's
training set: 500 images per class (4,000 train / 1,000 held out) play the
public data, and the other 55,000 are the private data; the real 10,000-image
test set stays the test set of the private side. The split is fixed by `seed`
and disjoint by construction (`vpntk synthesize --check-public-overlap`
confirms it byte for byte).

What this pairing is: public data from the private data's own distribution,
the most favourable case for public pre-training. A result on it says what
prompting a well-matched public model can do, not what it does under a domain
shift (that is the MNIST pairing).
"""

import argparse
import os

import numpy as np

from vpntk_jax import io_utils
from vpntk_jax.data import load_dataset

ROOT = os.path.join("data", "fashion_split")
PUBLIC_PER_CLASS = 500
PUBLIC_TEST_PER_CLASS = 100


def split_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
  """Sorted row indices of `per_class` rows of every class, drawn with `seed`."""
  rng = np.random.default_rng(seed)
  rows = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < per_class:
      raise ValueError(f"class {c} has {len(members)} rows, fewer than {per_class}")
    rows.append(rng.choice(members, per_class, replace=False))
  return np.sort(np.concatenate(rows))


def split_arrays(images, labels, *, per_class: int, test_per_class: int, seed: int):
  """(public train, public test, private) as (images, labels) pairs; disjoint rows."""
  public_rows = split_rows(labels, per_class, seed)
  private = np.ones(len(labels), bool)
  private[public_rows] = False
  # The public rows' own held-out part: the last test_per_class of each class.
  public_labels = labels[public_rows]
  held_out = np.zeros(len(public_rows), bool)
  for c in np.unique(public_labels):
    held_out[np.flatnonzero(public_labels == c)[per_class - test_per_class:]] = True
  train_rows, test_rows = public_rows[~held_out], public_rows[held_out]
  return ((images[train_rows], labels[train_rows]), (images[test_rows], labels[test_rows]),
          (images[private], labels[private]))


def write_split(root: str = ROOT, *, data_dir: str | None = None, seed: int = 0) -> dict:
  """Writes public.npz and private.npz under `root` (kept if both exist); returns their paths."""
  paths = {"public": os.path.join(root, "public.npz"),
           "private": os.path.join(root, "private.npz")}
  if all(os.path.exists(p) for p in paths.values()):
    return paths
  train = load_dataset("fashion_mnist", "train", data_dir=data_dir)
  test = load_dataset("fashion_mnist", "test", data_dir=data_dir)
  public_train, public_test, private = split_arrays(
      train.images, train.labels, per_class=PUBLIC_PER_CLASS,
      test_per_class=PUBLIC_TEST_PER_CLASS, seed=seed)
  names = np.array(train.class_names or [str(c) for c in range(train.num_classes)])
  os.makedirs(root, exist_ok=True)
  io_utils.save_npz_atomic(paths["public"], images=public_train[0], labels=public_train[1],
                           images_test=public_test[0], labels_test=public_test[1],
                           class_names=names)
  io_utils.save_npz_atomic(paths["private"], images=private[0], labels=private[1],
                           images_test=test.images, labels_test=test.labels, class_names=names)
  return paths


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=ROOT)
  parser.add_argument("--data-dir", default=None)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  for role, path in write_split(args.root, data_dir=args.data_dir, seed=args.seed).items():
    print(f"{role}: {path}")


if __name__ == "__main__":
  main()
