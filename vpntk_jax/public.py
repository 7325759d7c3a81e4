"""VP-NTK's public stage: models trained on public data only, at no privacy cost.

`vpntk pretrain` trains, on a public labelled dataset,
  (a) a class-conditional generator (the DP-NTK recipe with no noise: it
      matches the exact labelled NTK mean embedding of the public pixels), and
  (b) a feature extractor (a CNN classifier; its activations are features),
and saves them in a directory:
  public.json   what they are: architectures, resolution, classes, public
                data, the extractor's accuracy on the public test split
  models/       Orbax checkpoint of the weights and feature statistics
public.json is written last, so a directory with it is complete. These models
carry no guarantee about their own (public) training data; privacy concerns
only the private data a later `vpntk synthesize --method vp-ntk` run releases.

A directory may also hold an extractor only: torchvision's ImageNet VGG19
converted by `python -m vpntk_jax.models.vgg` (public.json "extractor":
{"kind": "vgg19", ...}, no "generator"). DP-MEPF uses it; vp-ntk, which
prompts the public generator, refuses it (`require_generator`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from vpntk_jax import io_utils
from vpntk_jax import training
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.run_dir import stage
from vpntk_jax.data import ImageDataset, load_dataset, resize_dataset
from vpntk_jax.errors import ConfigError, DataError, RunDirError
from vpntk_jax.evaluation.cnn import predict_cnn, train_cnn
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.features.extractor_ntk import ExtractorNTKFeatureMap
from vpntk_jax.models.extractor import ConvExtractor
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.models.vgg import KIND as VGG19_KIND, VGG19Features

PUBLIC_JSON = "public.json"
MODELS = "models"
FORMAT = "vpntk-public-models/1"
# Standardising divides by the public std. Features (nearly) constant on the
# public data (dead ReLUs) may be active on other data; dividing by their tiny
# std would let them swamp the rest. So no feature is divided by less than
# this fraction of the median public std. (Norms are bounded after the NTK
# anyway; this is about feature quality, not privacy.)
RELATIVE_STD_FLOOR = 0.1


@dataclasses.dataclass(frozen=True, eq=False)
class PublicModels:
  """A public generator and extractor with their description (public.json).

  Extractor-only directories (VGG19) have generator and generator_variables None.
  """
  spec: dict
  generator: ConvCondGenerator | None
  generator_variables: dict | None
  extractor: ConvExtractor | VGG19Features
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


def _modules(spec: dict) -> tuple[ConvCondGenerator | None, ConvExtractor | VGG19Features]:
  g, e = spec.get("generator"), spec["extractor"]
  generator = None if g is None else ConvCondGenerator(
      num_classes=spec["num_classes"], image_shape=tuple(spec["image_shape"]),
      hidden=g["hidden"], channels=g["channels"])
  kind = e.get("kind", "ConvExtractor")
  if kind == "ConvExtractor":
    extractor = ConvExtractor(num_classes=spec["num_classes"], widths=tuple(e["widths"]),
                              hidden=e["hidden"])
  elif kind == VGG19_KIND:
    extractor = VGG19Features()
  else:
    raise ConfigError(f"unknown extractor kind {kind!r} in {PUBLIC_JSON}; expected "
                      f"ConvExtractor or {VGG19_KIND}")
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
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      directory = os.path.abspath(os.path.join(path, MODELS))
      # Restored onto this process's first device: without a sharding in the target,
      # Orbax reuses the saver's device topology and refuses checkpoints made on
      # another machine (a CPU-pretrained model loaded on a GPU, say).
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                              _abstract_tree(spec))
      # Compared before restoring: a refused restore leaves Orbax's reader threads behind.
      _check_shapes(_shapes(getattr(checkpointer.metadata(directory), "item_metadata", None)),
                    _shapes(abstract))
      tree = checkpointer.restore(directory, abstract)
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise ConfigError(f"the checkpoint in {path}/{MODELS} does not match the architecture and "
                      f"resolution in its {PUBLIC_JSON} ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})") from None
  generator, extractor = _modules(spec)
  return PublicModels(spec, generator, tree.get("generator"), extractor,
                      tree["extractor"]["params"], np.asarray(tree["feature_mean"]),
                      np.asarray(tree["feature_std"]), path=path)


def _shapes(tree) -> dict[str, tuple]:
  return {jax.tree_util.keystr(k): tuple(leaf.shape)
          for k, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _check_shapes(stored: dict[str, tuple], expected: dict[str, tuple]) -> None:
  differ = sorted(k for k in stored.keys() | expected.keys() if stored.get(k) != expected.get(k))
  if differ:
    k = differ[0]
    raise ValueError(f"{len(differ)} arrays differ, first {k}: stored {stored.get(k)}, "
                     f"expected {expected.get(k)}")


def check_compatible(models: PublicModels, image_shape: tuple[int, int, int]) -> None:
  if tuple(image_shape) != models.image_shape:
    raise ConfigError(
        f"the public models were trained for {models.image_shape} images; the private data is "
        f"{tuple(image_shape)}. Set image_size to {models.image_shape[0]} or pretrain at this "
        f"size (vpntk pretrain --image-size {image_shape[0]}).")


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


def load_public_data(config: PretrainConfig, split: str) -> ImageDataset:
  data = config.data
  return resize_dataset(load_dataset(data.source, split, data_dir=data.data_dir,
                                     download=data.download,
                                     label_attribute=data.label_attribute), data.image_size)


def _say(msg: str, quiet: bool) -> None:
  if not quiet:
    print(msg, file=sys.stderr, flush=True)


def feature_statistics(extractor, params, images: np.ndarray, shape, *,
                       chunk_size: int = 1024) -> tuple[np.ndarray, ...]:
  """Mean and std of the extractor's pooled features on (public) uint8 images."""
  f = extractor.feature_dim(shape[0])
  raw = ExtractorNTKFeatureMap(extractor, params, np.zeros((f,), np.float32),
                               np.ones((f,), np.float32), shape, ntk.NTKNetwork((1,)),
                               chunk_size=chunk_size).extract(images)
  return raw.mean(0), raw.std(0)


def feature_scale(std: np.ndarray) -> np.ndarray:
  """The divisor of each standardised feature: its public std, floored (RELATIVE_STD_FLOOR)."""
  std = np.asarray(std, np.float32)
  return np.maximum(std, RELATIVE_STD_FLOOR * float(np.median(std)) + 1e-12).astype(np.float32)


def pretrain(config: PretrainConfig, out: str, *, force: bool = False,
             quiet: bool = False) -> PublicModels:
  """Trains the public extractor and generator and saves them in `out`."""
  data = load_public_data(config, "train")
  try:
    test = load_public_data(config, "test")
  except DataError:
    test = None  # accuracy is reported only where a test split exists
  if os.path.exists(out) and os.listdir(out) and not force:
    raise RunDirError(f"{out} exists and is not empty; use --force to replace it or another "
                      f"--out")
  run = stage(out)
  t0 = time.perf_counter()
  shape, num_classes = data.image_shape, data.num_classes
  key = jax.random.key(config.seed)
  extractor = ConvExtractor(num_classes, tuple(config.extractor_widths), config.extractor_hidden)
  _say(f"training the public extractor on {data.name} ({len(data)} images)", quiet)
  extractor_params, losses = train_cnn(data.images, data.labels, num_classes=num_classes,
                                       key=jax.random.fold_in(key, 1),
                                       epochs=config.extractor_epochs, model=extractor)
  accuracy = None
  if test is not None:
    pred = predict_cnn(extractor_params, test.images, num_classes=num_classes, model=extractor)
    accuracy = float(np.mean(pred == test.labels))
    _say(f"extractor accuracy on {test.name}: {accuracy:.3f}", quiet)
  mean, std = feature_statistics(extractor, extractor_params, data.images, shape)

  # The generator: DP-NTK on the public pixels with the exact (noise-free) embedding.
  pixel_features = NTKFeatureMap(ntk.NTKNetwork(tuple(config.ntk_layers)),
                                 input_dim=int(np.prod(shape)), seed=config.seed)
  target = np.asarray(ntk.embedding_to_matrix(pixel_features.private_sum(
      data.images, data.labels, num_classes))) / len(data)
  generator = ConvCondGenerator(num_classes=num_classes, image_shape=shape,
                                hidden=config.train.generator_hidden,
                                channels=config.train.generator_channels)
  _say(f"training the public generator ({config.train.steps} steps)", quiet)
  state = training.train_to_match(pixel_features, generator, target, num_classes=num_classes,
                                  config=config.train, seed=config.seed,
                                  log_path=run.file("generator_log.csv"),
                                  progress=not quiet)
  spec = {
      "format": FORMAT, "public_data": data.name, "image_shape": list(shape),
      "num_classes": num_classes, "class_names": list(data.class_names or ()),
      "generator": {"kind": "ConvCondGenerator", "hidden": config.train.generator_hidden,
                    "channels": config.train.generator_channels,
                    "latent_dim": config.train.latent_dim},
      "extractor": {"kind": "ConvExtractor", "widths": list(config.extractor_widths),
                    "hidden": config.extractor_hidden,
                    "feature_dim": extractor.feature_dim(shape[0]),
                    "public_test_accuracy": accuracy, "train_losses": losses},
      "pretrain_config": config.to_json(),
      "seconds": round(time.perf_counter() - t0, 1),
      "privacy": "public data only: no privacy cost, no guarantee for the public data",
  }
  models = PublicModels(spec, generator, {"params": state.params,
                                          "batch_stats": state.model_state},
                        extractor, extractor_params, mean, std)
  save_public(models, run.work)
  run.finish()
  _say(f"public models saved in {out} ({spec['seconds']} s)", quiet)
  return models
