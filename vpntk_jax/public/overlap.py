"""The overlap check: public training images that are also private ones make the
public models not public with respect to those examples."""

from __future__ import annotations

import hashlib

import numpy as np

from vpntk_jax.data import ImageDataset
from vpntk_jax.errors import DataError

def _image_hashes(images: np.ndarray) -> set[bytes]:
  return {hashlib.blake2b(img.tobytes(), digest_size=16).digest() for img in images}


def check_overlap(public: ImageDataset, private: ImageDataset) -> None:
  """Raises DataError when an image occurs in both sets (byte-identical, same size).

  Run by the data owner before any release; it reads the private data, so
  its outcome is for the operator, not for publication.
  """
  if public.image_shape != private.image_shape:
    raise DataError(f"cannot compare {public.image_shape} public with {private.image_shape} "
                    f"private images; resize them to the same size first")
  shared = _image_hashes(public.images) & _image_hashes(private.images)
  if shared:
    raise DataError(f"{len(shared)} images of the public set {public.name} also occur in the "
                    f"private set {private.name}: public models trained on them are not public "
                    f"with respect to those examples. Remove them from one of the sets.")
