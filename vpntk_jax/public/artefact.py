"""The public-model artefact: a directory with public.json (what the models are)
and models/ (an Orbax checkpoint of their weights and feature statistics).

Written by `vpntk pretrain` (or the VGG converters); read by every method that
uses public models. public.json is written last, so a directory with it is
complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vpntk_jax import io_utils
from vpntk_jax.errors import ConfigError, DataError, RunDirError
from vpntk_jax.evaluation.cnn import predict_logits
from vpntk_jax.features import ntk
from vpntk_jax.features.extractor_ntk import ExtractorNTKFeatureMap
from vpntk_jax.models.extractor import ConvExtractor
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.models import vgg
from vpntk_jax.staging import RunDir, check_replaceable, is_nonempty_dir, stage
from vpntk_jax.training.checkpoints import reading_checkpoint

PUBLIC_JSON = "public.json"
MODELS = "models"
FORMAT = "vpntk-public-models/1"
# Standardising divides by the public std. Features (nearly) constant on the
# public data (dead ReLUs) may be active on other data; dividing by their tiny
# std would let them swamp the rest. So no feature is divided by less than
# this fraction of the median public std. (Norms are bounded after the NTK
# anyway; this is about feature quality, not privacy.)
RELATIVE_STD_FLOOR = 0.1
GENERATOR_LOG = "generator_log.csv"
# What a public-models directory holds; --force replaces nothing else.
PUBLIC_DIR_NAMES = frozenset({PUBLIC_JSON, MODELS, GENERATOR_LOG})


@dataclasses.dataclass(frozen=True, eq=False)
class PublicModels:
  """A public generator and extractor with their description (public.json).

  Extractor-only directories (VGG16/19, `vpntk pretrain --extractor-only`) have
  generator and generator_variables None.
  """
  spec: dict
  generator: ConvCondGenerator | None
  generator_variables: dict | None
  extractor: ConvExtractor | vgg.VGGFeatures
  extractor_params: Any
  feature_mean: np.ndarray
  feature_std: np.ndarray
  path: str | None = None  # where it was loaded from, for messages

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.spec["image_shape"])

  @property
  def num_classes(self) -> int:
    return int(self.spec["num_classes"])

  @property
  def latent_dim(self) -> int:
    require_generator(self)
    return int(self.spec["generator"]["latent_dim"])

  def feature_map(self, network: ntk.NTKNetwork, seed: int) -> ExtractorNTKFeatureMap:
    return ExtractorNTKFeatureMap(self.extractor, self.extractor_params, self.feature_mean,
                                  feature_scale(self.feature_std), self.image_shape, network,
                                  seed=seed)


def require_generator(models: PublicModels) -> None:
  """Raises ConfigError unless `models` has a generator (vp-ntk needs one)."""
  if models.generator is None:
    kind = models.spec.get("extractor", {}).get("kind", "an extractor")
    raise ConfigError(f"{models.path or 'the public model directory'} has no public generator "
                      f"(it holds a {kind} extractor only, usable by dp-mepf); vp-ntk needs one "
                      f"made by `vpntk pretrain`")


def classifier_logits(models: PublicModels, images: np.ndarray, *,
                      batch_size: int = 1024) -> np.ndarray:
  """float32 (n, num_classes) logits of the public ConvExtractor classifier on uint8
  NHWC images at the models' resolution (PrivImage's semantic query votes with them).

  Fixed-size batches, the last one padded, compile once per shape.
  """
  if not isinstance(models.extractor, ConvExtractor):
    kind = models.spec.get("extractor", {}).get("kind", type(models.extractor).__name__)
    raise ConfigError(f"{models.path or 'the public model directory'} holds a {kind} extractor "
                      f"without a classifier head; the semantic query needs a public classifier "
                      f"made by `vpntk pretrain`")
  if batch_size < 1:
    raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != models.image_shape:
    raise DataError(f"the public classifier takes uint8 images of shape (n, "
                    f"{', '.join(map(str, models.image_shape))}), got {images.dtype} "
                    f"{images.shape}")
  return predict_logits(models.extractor_params, images, model=models.extractor,
                        num_classes=models.num_classes, batch_size=batch_size)


def _modules(spec: dict) -> tuple[ConvCondGenerator | None, ConvExtractor | vgg.VGGFeatures]:
  g, e = spec.get("generator"), spec["extractor"]
  generator = None if g is None else ConvCondGenerator(
      num_classes=spec["num_classes"], image_shape=tuple(spec["image_shape"]),
      hidden=g["hidden"], channels=g["channels"])
  kind = e.get("kind", "ConvExtractor")
  if kind == "ConvExtractor":
    extractor = ConvExtractor(num_classes=spec["num_classes"], widths=tuple(e["widths"]),
                              hidden=e["hidden"])
  elif kind in vgg.KINDS:
    extractor = vgg.from_spec(e)
  else:
    raise ConfigError(f"unknown extractor kind {kind!r} in {PUBLIC_JSON}; expected "
                      f"ConvExtractor or one of {', '.join(vgg.KINDS)}")
  return generator, extractor


def _abstract_tree(spec: dict) -> dict:
  """The checkpoint's pytree structure (shapes only) for the architectures in `spec`."""
  generator, extractor = _modules(spec)
  h, w, c = spec["image_shape"]
  e = jax.eval_shape(lambda: extractor.init(jax.random.key(0), jnp.zeros((2, h, w, c))))
  f = extractor.feature_dim(h)
  stats = jax.ShapeDtypeStruct((f,), jnp.float32)
  tree = {"extractor": {"params": e["params"]}, "feature_mean": stats, "feature_std": stats}
  if generator is not None:
    g = jax.eval_shape(lambda: generator.init(jax.random.key(0), jnp.zeros((2, spec["generator"][
        "latent_dim"])), jnp.zeros((2,), jnp.int32), train=False))
    tree["generator"] = {"params": g["params"], "batch_stats": g["batch_stats"]}
  return tree


def save_public(models: PublicModels, out: str) -> None:
  """Writes models/ then public.json into `out` (which must not hold models yet)."""
  tree = {"extractor": {"params": models.extractor_params},
          "feature_mean": jnp.asarray(models.feature_mean, jnp.float32),
          "feature_std": jnp.asarray(models.feature_std, jnp.float32)}
  if models.generator_variables is not None:
    tree["generator"] = models.generator_variables
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(os.path.join(out, MODELS)), tree)
  io_utils.write_json_atomic(os.path.join(out, PUBLIC_JSON), models.spec)


def open_public_dir(out: str, *, force: bool) -> RunDir:
  """A staging directory for new public models in `out` (swap in with `finish()`);
  refuses, before anything is written, a non-empty `out` unless `force`, and with
  `force` anything but a public-models directory."""
  if is_nonempty_dir(out):
    if not force:
      raise RunDirError(f"{out} exists and is not empty; use --force to replace it or another "
                        f"--out")
    check_replaceable(out, PUBLIC_DIR_NAMES, PUBLIC_JSON, "a public-models directory")
  return stage(out)


def load_public(path: str) -> PublicModels:
  """Loads `vpntk pretrain` output (or models a user saved in the same format).

  A run loads them once and passes them to every stage that needs them.
  """
  spec_path = os.path.join(path, PUBLIC_JSON)
  if not os.path.isfile(spec_path):
    raise ConfigError(f"{path} holds no public models ({PUBLIC_JSON} missing); make them with "
                      f"`vpntk pretrain --out {path}`")
  path = os.path.abspath(path)
  with open(spec_path) as f:
    spec = json.load(f)
  if spec.get("format") != FORMAT:
    raise ConfigError(f"{spec_path}: format {spec.get('format')!r}, expected {FORMAT!r}")
  directory = os.path.abspath(os.path.join(path, MODELS))
  # Restored onto this process's first device: without a sharding in the target,
  # Orbax reuses the saver's device topology and refuses checkpoints made on
  # another machine (a CPU-pretrained model loaded on a GPU, say).
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                            _abstract_tree(spec))
  except (ValueError, KeyError, TypeError) as e:
    raise _mismatch(path, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
  with reading_checkpoint(directory), ocp.StandardCheckpointer() as checkpointer:
    # Compared before restoring: a refused restore leaves Orbax's reader threads behind.
    differ = shape_difference(stored_shapes(checkpointer, directory), tree_shapes(abstract))
    if differ:
      raise _mismatch(path, differ)
    tree = checkpointer.restore(directory, abstract)
  generator, extractor = _modules(spec)
  return PublicModels(spec, generator, tree.get("generator"), extractor,
                      tree["extractor"]["params"], np.asarray(tree["feature_mean"]),
                      np.asarray(tree["feature_std"]), path=path)


def tree_shapes(tree) -> dict[str, tuple]:
  """Key path -> shape of every leaf (a checkpoint's metadata or an abstract tree)."""
  return {jax.tree_util.keystr(k): tuple(leaf.shape)
          for k, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _mismatch(path: str, why: str) -> ConfigError:
  return ConfigError(f"the checkpoint in {path}/{MODELS} does not match the architecture and "
                     f"resolution in its {PUBLIC_JSON} ({why})")


def stored_shapes(checkpointer: ocp.StandardCheckpointer, directory: str) -> dict[str, tuple]:
  """tree_shapes of the checkpoint in `directory`, from its metadata; inside
  `reading_checkpoint`, unreadable metadata is a corrupt checkpoint."""
  stored = getattr(checkpointer.metadata(directory), "item_metadata", None)
  if stored is None:  # Orbax logs the failed read and returns no tree
    raise ValueError("its metadata (_METADATA) cannot be read")
  return tree_shapes(stored)


def shape_difference(stored: dict[str, tuple], expected: dict[str, tuple]) -> str | None:
  """How two tree_shapes differ (None: they do not)."""
  differ = sorted(k for k in stored.keys() | expected.keys() if stored.get(k) != expected.get(k))
  if not differ:
    return None
  k = differ[0]
  return (f"{len(differ)} arrays differ, first {k}: stored {stored.get(k)}, expected "
          f"{expected.get(k)}")


def check_compatible(models: PublicModels, image_shape: tuple[int, int, int]) -> None:
  """Refuses data of another size than the public models'; except an extractor-only VGG
  directory, which takes any size and 1 or 3 channels (smaller images are resized up
  to 32 inside it). Its image_shape is that of its feature statistics, which only the
  auxiliary public_feature_distance reads (and skips at other sizes)."""
  if models.generator is None and isinstance(models.extractor, vgg.VGGFeatures):
    return
  if tuple(image_shape) != models.image_shape:
    raise ConfigError(
        f"the public models were trained for {models.image_shape} images; the private data is "
        f"{tuple(image_shape)}. Set image_size to {models.image_shape[0]} or pretrain at this "
        f"size (vpntk pretrain --image-size {image_shape[0]}).")


def feature_scale(std: np.ndarray) -> np.ndarray:
  """The divisor of each standardised feature: its public std, floored (RELATIVE_STD_FLOOR)."""
  std = np.asarray(std, np.float32)
  return np.maximum(std, RELATIVE_STD_FLOOR * float(np.median(std)) + 1e-12).astype(np.float32)
