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

A directory may also hold an extractor only: torchvision's ImageNet VGG19
converted by `python -m vpntk_jax.convert_vgg` (public.json "extractor":
{"kind": "vgg19", ...}, no "generator"). DP-MEPF uses it; vp-ntk, which
prompts the public generator, refuses it (`require_generator`).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from vpntk_jax import training
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.data import ImageDataset, load_dataset, resize_dataset
from vpntk_jax.errors import DataError
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


def feature_statistics(extractor, params, images: np.ndarray, shape, *,
                       chunk_size: int = 1024) -> tuple[np.ndarray, ...]:
  """Mean and std of the extractor's pooled features on (public) uint8 images."""
  f = extractor.feature_dim(shape[0])
  raw = ExtractorNTKFeatureMap(extractor, params, np.zeros((f,), np.float32),
                               np.ones((f,), np.float32), shape, ntk.NTKNetwork((1,)),
                               chunk_size=chunk_size).extract(images)
  return raw.mean(0), raw.std(0)


def train_public_generator(config: PretrainConfig, data: ImageDataset, log_path: str,
                           quiet: bool) -> tuple[ConvCondGenerator, dict]:
  """The public generator and its variables: DP-NTK on the public pixels with the
  exact (noise-free) embedding."""
  shape, num_classes = data.image_shape, data.num_classes
  pixel_features = NTKFeatureMap(ntk.NTKNetwork(tuple(config.ntk_layers)),
                                 input_dim=int(np.prod(shape)), seed=config.seed)
  target = np.asarray(ntk.embedding_to_matrix(pixel_features.private_sum(
      data.images, data.labels, num_classes))) / len(data)
  generator = ConvCondGenerator(num_classes=num_classes, image_shape=shape,
                                hidden=config.train.generator_hidden,
                                channels=config.train.generator_channels)
  say(f"training the public generator ({config.train.steps} steps)", quiet)
  state = training.train_to_match(pixel_features, generator, target, num_classes=num_classes,
                                  config=config.train, seed=config.seed, log_path=log_path,
                                  progress=not quiet)
  return generator, {"params": state.params, "batch_stats": state.model_state}


def pretrain(config: PretrainConfig, out: str, *, force: bool = False,
             quiet: bool = False) -> PublicModels:
  """Trains the public extractor (and, unless `config.generator` is False, the
  generator) and saves them in `out`."""
  data = load_public_data(config, "train")
  try:
    test = load_public_data(config, "test")
  except DataError:
    test = None  # accuracy is reported only where a test split exists
  run = open_public_dir(out, force=force)
  t0 = time.perf_counter()
  shape, num_classes = data.image_shape, data.num_classes
  key = jax.random.key(config.seed)
  extractor = ConvExtractor(num_classes, tuple(config.extractor_widths), config.extractor_hidden)
  say(f"training the public extractor on {data.name} ({len(data)} images)", quiet)
  extractor_params, losses = train_cnn(data.images, data.labels, num_classes=num_classes,
                                       key=jax.random.fold_in(key, 1),
                                       epochs=config.extractor_epochs, model=extractor)
  accuracy = None
  if test is not None:
    pred = predict_cnn(extractor_params, test.images, num_classes=num_classes, model=extractor)
    accuracy = float(np.mean(pred == test.labels))
    say(f"extractor accuracy on {test.name}: {accuracy:.3f}", quiet)
  mean, std = feature_statistics(extractor, extractor_params, data.images, shape)
  generator = generator_variables = None
  if config.generator:
    generator, generator_variables = train_public_generator(config, data,
                                                            run.file(GENERATOR_LOG), quiet)
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

