"""Evaluation of a synthetic set: classifiers trained on it, tested on the real
test set, and (with public models) a feature distance; written to metrics.json."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from vpntk_jax import io_utils, public
from vpntk_jax import protocols
from vpntk_jax.blocks import NO_TEST_SET
from vpntk_jax.data import ImageDataset
from vpntk_jax.errors import ConfigError, VpntkError
from vpntk_jax.evaluation import evaluate_synthetic, fid
from vpntk_jax.evaluation.protocol import balanced_subsample
from vpntk_jax.features import ntk
from vpntk_jax.log import say
from vpntk_jax.models import inception, vgg
from vpntk_jax.run_files import METRICS


def evaluate(images, labels, test: ImageDataset, config, run, *, public_models=None,
             validation: ImageDataset | None = None, quiet: bool = False) -> dict:
  """`validation`: a benchmark protocol's held-out real images (never private
  training data), scored as the test set is (validation_accuracy)."""
  reason = not_evaluated_reason(test, config)
  if reason is not None:
    metrics = {"evaluated": False, "reason": reason, "test_set": None,
               "environment": environment()}
    io_utils.write_json_atomic(run.file(METRICS), metrics)
    return metrics
  metrics = evaluate_synthetic(images, labels, test.images, test.labels,
                               num_classes=test.num_classes, classifiers=config.classifiers,
                               train_size=config.eval_train_size, seed=config.seed,
                               cnn_epochs=config.cnn_epochs, progress=not quiet,
                               validation=(None if validation is None
                                           else (validation.images, validation.labels)))
  metrics["test_set"] = test.name
  if protocols.describe(config.protocol) is not None:
    metrics["benchmark_protocol"] = protocols.describe(config.protocol)
    metrics["validation_set"] = None if validation is None else validation.name
  metrics["environment"] = environment()
  if config.fid_weights is not None:
    metrics["inception"] = inception_distances(images, labels, test, config)
  if config.vgg16_frechet is not None:
    metrics["vgg16_frechet"] = vgg16_frechet(images, labels, test, config)
  if public_models is not None:
    # An auxiliary metric: its failure is recorded, never allowed to lose the run.
    try:
      metrics["public_feature_distance"] = public_feature_distance(
          images, labels, test, config, public_models)
    except VpntkError as e:
      metrics["public_feature_distance"] = {"error": str(e)}
      say(f"WARNING: public feature distance not computed: {e}")
  io_utils.write_json_atomic(run.file(METRICS), metrics)
  return metrics


def check_fid_files(config) -> None:
  """Reads the Inception weights and reference statistics a config names (before
  a run writes anything: a bad file is bad input)."""
  if config.fid_weights is not None:
    inception.load_inception_params(config.fid_weights)
  if config.fid_stats is not None:
    fid.load_statistics(config.fid_stats)
  if config.vgg16_frechet is not None:
    load_vgg16(config.vgg16_frechet)


def inception_distances(images, labels, test: ImageDataset, config) -> dict:
  """Inception FID and KID of up to `config.fid_samples` synthetic images (balanced)
  against the real test set, or FID against `config.fid_stats`."""
  feature_fn = inception.inception_feature_fn(inception.load_inception_params(
      config.fid_weights))
  rows = balanced_subsample(labels, max(1, config.fid_samples // test.num_classes),
                            seed=config.seed)
  weights = {"weights": os.path.abspath(config.fid_weights),
             "weights_sha256": io_utils.sha256_file(config.fid_weights),
             "network": "pytorch-fid FID InceptionV3, pool3 (2048-d)"}
  # The batch size is read here, at call time, so one module setting serves every call.
  if config.fid_stats is not None:
    mu, sigma = fid.load_statistics(config.fid_stats)
    return {**fid.fid_against_statistics(feature_fn, images[rows], mu, sigma,
                                         batch_size=fid.FEATURES_BATCH_SIZE),
            "reference": os.path.abspath(config.fid_stats), **weights}
  return {**fid.fid_kid(feature_fn, images[rows], test.images, seed=config.seed,
                        batch_size=fid.FEATURES_BATCH_SIZE),
          "reference": test.name, **weights}


def load_vgg16(path: str):
  """The public models in `path`, refused (ConfigError) unless they are a VGG16."""
  models = public.load_public(path)
  if not (isinstance(models.extractor, vgg.VGGFeatures) and models.extractor.depth == 16):
    kind = models.spec.get("extractor", {}).get("kind")
    raise ConfigError(f"--vgg16-frechet {path} holds a {kind} extractor, not the VGG16 made by "
                      f"`vpntk public vgg16`")
  return models


def vgg16_frechet(images, labels, test: ImageDataset, config) -> dict:
  """Frechet distance between Gaussians fitted to the VGG16 pooled features (spatial
  means of each block's last conv, 1,472) of up to `config.fid_samples` synthetic
  images (balanced) and of the real test set. A distance in these features, not an
  FID (that is Inception's pool3)."""
  models = load_vgg16(config.vgg16_frechet)
  extractor, params = models.extractor, models.extractor_params
  feature_fn = jax.jit(lambda x: extractor.apply({"params": params},
                                                 x.astype(jnp.float32) / 255.0,
                                                 features="pooled"))
  rows = balanced_subsample(labels, max(1, config.fid_samples // test.num_classes),
                            seed=config.seed)
  synthetic = fid.features_in_batches(feature_fn, images[rows])
  real = fid.features_in_batches(feature_fn, test.images)
  e = models.spec.get("extractor", {})
  return {"frechet_distance": fid.fid_from_features(synthetic, real),
          "num_synthetic": int(len(rows)), "num_test": int(len(test)), "reference": test.name,
          "features": "VGG16 pooled: spatial means of each block's last conv before ReLU "
                      f"({extractor.feature_dim(test.image_shape[0])})",
          "model": models.path, "weights_sha256": e.get("source", {}).get("sha256"),
          "weights": e.get("weights")}


def not_evaluated_reason(test: ImageDataset, config) -> str | None:
  """Why a run evaluates nothing, or None when it evaluates."""
  if not config.data.has_test_set:
    return (f"no test set was given (--test-data none, data.test_source {NO_TEST_SET!r}): "
            f"the synthetic set was not evaluated")
  if not config.evaluate:
    return "evaluation was switched off (evaluate false, --skip-evaluation)"
  if len(test) == 0:
    return f"the test set {test.name} has no images"
  return None


def environment() -> dict:
  """Where this process computes: GPU training is not bit-reproducible, so runs record it."""
  return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "jax": jax.__version__}


def public_feature_distance(images, labels, test: ImageDataset, config, models) -> dict:
  """FID / KID between synthetic and real test images in the public extractor's
  (pooled, standardised) feature space: an offline stand-in for Inception FID."""
  if models.image_shape != test.image_shape:
    return {"skipped": f"public models are for {models.image_shape} images"}
  rows = balanced_subsample(labels, max(1, len(test) // test.num_classes), seed=config.seed)
  fmap = models.feature_map(ntk.NTKNetwork(tuple(config.ntk_layers)), seed=config.seed)
  feature_fn = jax.jit(lambda x: fmap.features(x.astype(jnp.float32) / 255.0))
  result = fid.fid_kid(feature_fn, images[rows], test.images, seed=config.seed)
  return {"features": f"public extractor ({models.spec['public_data']}), pooled", **result}
