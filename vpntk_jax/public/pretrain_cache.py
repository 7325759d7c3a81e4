"""Finished public pretrainings kept across runs, found by what they were trained from.

PrivImage pretrains on the public classes its query selected; a second run with
the same selection (and start, settings and seed) would repeat hours of public
work. An entry is a public diffusion model directory (`diffusion_model`'s
layout) named by the sha256 of its inputs: the starting weights, the public
images and labels, the pretraining settings and the seed. Everything in it is
public (the selection is post-processing of a release), so keeping it outside
the run directory reveals nothing the run's own files do not.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil

import jax
import numpy as np

from vpntk_jax.models import unet
from vpntk_jax.public import diffusion_model
from vpntk_jax.staging import make_dir


def entry(root: str, params, images: np.ndarray, labels: np.ndarray, settings, *,
          seed: int) -> str:
  """The directory under `root` for a pretraining from these inputs."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(params):
    leaf = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{leaf.dtype.str}{leaf.shape}".encode())
    h.update(leaf.tobytes())
  for array in (images, labels):
    array = np.ascontiguousarray(array)
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(array.tobytes())
  h.update(json.dumps({"settings": dataclasses.asdict(settings), "seed": int(seed)},
                      sort_keys=True).encode())
  return os.path.join(root, h.hexdigest()[:32])


def load(path: str, model: unet.UNet):
  """The EMA weights stored at `path`, or None when there is no finished entry."""
  if not os.path.isfile(os.path.join(path, diffusion_model.DIFFUSION_JSON)):
    return None
  found = diffusion_model.load_diffusion_model(path)
  if found.config != model.config:
    return None
  return found.params


def store(path: str, model: unet.UNet, params) -> None:
  """Writes the entry beside `path` and moves it in whole."""
  make_dir(os.path.dirname(path) or ".")
  staging = path + ".partial"
  if os.path.exists(staging):
    shutil.rmtree(staging)
  make_dir(staging)
  diffusion_model.save_diffusion_model(staging, model, params, size="cached pretraining",
                                       privacy="public data only")
  if not os.path.exists(path):
    os.replace(staging, path)
  else:
    shutil.rmtree(staging)
