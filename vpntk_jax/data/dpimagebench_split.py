"""DPImageBench's split of the 60,000 MNIST / FashionMNIST training images into
55,000 private training images and 5,000 validation images (`--protocol dpimagebench`).

How DPImageBench splits (github.com/2019ChenGong/DPImageBench, data/dataset_loader.py,
load_sensitive_data, evaluation mode "val", its default): `torch.manual_seed(0)`, then
`torch.utils.data.random_split(train_set, [55000, 5000])` with no generator of its own,
so the permutation is `torch.randperm(60000)` from the freshly seeded default
generator; its first 55,000 entries train, the last 5,000 validate. The indices are
positions in the training set in torchvision's order: its preprocessing
(data/preprocess_dataset.py) writes the images as 00000/img00000000.png, ... in the
order torchvision reads the IDX files, and its loader reads them back sorted by name,
which is that order again. The built-in `fashion_mnist` and `mnist` sources read the
same IDX files in the same order.

VALIDATION_FILE holds those 5,000 indices (uint16, in random_split's order). They were
computed once with torch 2.1.0, the version DPImageBench installs, in a scratch venv:

    pip download torch==2.1.0 --no-deps && pip install torch-2.1.0-*.whl  (and its deps)
    python -c "import torch; from torch.utils.data import random_split
    torch.manual_seed(0)
    print(random_split(list(range(60000)), [55000, 5000])[1].indices)"

and saved with numpy.save(uint16). sha256 (VALIDATION_SHA256):
722a6de99b740a50eef573368fc7b44d51f43d800396ba03ffd303e53847ffa0.

`torch_randperm` reproduces torch's CPU randperm without torch (for n below 2^32/20:
mt19937 seeded as torch.manual_seed seeds it, then a Fisher-Yates pass swapping entry
i with entry i + random() % (n - i)); tests/test_dpimagebench.py checks that it gives
the stored file, so the file can be re-derived without torch.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from vpntk_jax import protocols
from vpntk_jax.data.dataset import ImageDataset
from vpntk_jax.errors import DataError

VALIDATION_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "dpimagebench_validation.npy")
VALIDATION_SHA256 = "722a6de99b740a50eef573368fc7b44d51f43d800396ba03ffd303e53847ffa0"
TRAIN_SET_SIZE = protocols.DPIMAGEBENCH_TRAIN_SIZE + protocols.DPIMAGEBENCH_VALIDATION_SIZE


def validation_indices() -> np.ndarray:
  """The 5,000 validation positions (int64, random_split's order), checked against the
  file's recorded sha256."""
  with open(VALIDATION_FILE, "rb") as f:
    raw = f.read()
  if hashlib.sha256(raw).hexdigest() != VALIDATION_SHA256:
    raise DataError(f"{VALIDATION_FILE} is damaged (sha256 differs from the recorded one); "
                    f"reinstall vpntk_jax")
  with open(VALIDATION_FILE, "rb") as f:
    return np.load(f).astype(np.int64)


def torch_randperm(n: int, seed: int) -> np.ndarray:
  """`torch.manual_seed(seed); torch.randperm(n)` on the CPU, without torch."""
  if not 0 < n < 2**32 // 20:
    raise ValueError(f"n must lie in (0, {2**32 // 20}), got {n}")
  # torch's CPU generator is mt19937 seeded as numpy's legacy RandomState seeds it;
  # its random() is one 32-bit output, as randint over the full uint32 range draws.
  draws = np.random.RandomState(seed).randint(0, 2**32, size=n - 1, dtype=np.uint32)
  perm = np.arange(n, dtype=np.int64)
  for i, draw in enumerate(draws.tolist()):
    j = i + draw % (n - i)
    perm[i], perm[j] = perm[j], perm[i]
  return perm


def split(train: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
  """(private, validation): the 55,000 training images DPImageBench trains on (in
  their stored order) and its 5,000 validation images (in random_split's order)."""
  if len(train) != TRAIN_SET_SIZE:
    raise DataError(f"--protocol dpimagebench splits the published {TRAIN_SET_SIZE:,}-image "
                    f"training set of {' or '.join(protocols.DPIMAGEBENCH_SOURCES)}; "
                    f"{train.name} is not that set")
  validation = validation_indices()
  keep = np.ones(TRAIN_SET_SIZE, bool)
  keep[validation] = False

  def subset(rows: np.ndarray, name: str) -> ImageDataset:
    return ImageDataset(images=np.ascontiguousarray(train.images[rows]),
                        labels=train.labels[rows], num_classes=train.num_classes,
                        name=f"{train.name} ({name})", class_names=train.class_names)

  return (subset(np.flatnonzero(keep), "dpimagebench private 55,000"),
          subset(validation, "dpimagebench validation 5,000"))
