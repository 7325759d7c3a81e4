"""Does a public diffusion model render its classes? Samples of each class, scored by
the pool classifier.

    python -m experiments.public_diffusion_eval --model data/public_diffusion/fashion_pool
    python -m experiments.public_diffusion_eval \\
        --model data/public_diffusion/fashion_pool.partial --unet-size fast   # while it trains

`--model`: a public diffusion model (`vpntk pretrain-diffusion`, diffusion.json), or a
training in progress (its `pretrain_checkpoints`, e.g. `fashion_pool.partial` of
experiments.public_diffusion): the latest checkpoint's EMA weights, read from a copy
so the training is not disturbed; its UNet size is `--unet-size` and its classes the
classifier's (a checkpoint stores no architecture).

`--classifier`: PrivImage's semantic-query classifier trained on the pool
(`vpntk pretrain --extractor-only --data data/public_pool/pool.npz --out
public/pool28_classifier`, docs/diffusion.md). Its classes must be the model's.

`--per-class` images of every class are drawn with the library's EDM Heun sampler as
synthesis draws them (`stages.diffusion_recipe.DiffusionSampler` through
`training.generate`: EMA weights, `--steps` Heun steps, `--guidance-scale`), the
classifier labels each, and per class the JSON gives the fraction labelled as the
intended class (`rendered`), next to the classifier's accuracy on the pool's real
test images of that class (`real_test_accuracy`: the same classifier's ceiling), with
the mean and the worst over the FashionMNIST classes. The record goes into
experiments/results/public_diffusion_eval.json under `--name`, and a sample grid (one
row per class, named) into experiments/results/public_diffusion_eval_NAME.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from experiments.results_file import merge_result
from vpntk_jax import public, training, visualize
from vpntk_jax.data import FASHION_MNIST_CLASSES, load_dataset
from vpntk_jax.errors import ConfigError, MissingSplitError, VpntkError
from vpntk_jax.models import unet
from vpntk_jax.public import diffusion_model
from vpntk_jax.stages.diffusion_recipe import DiffusionSampler
from vpntk_jax.training.samplers import TrainState

RESULTS = os.path.join("experiments", "results")
RESULTS_JSON = os.path.join(RESULTS, "public_diffusion_eval.json")
GRID_COLUMNS = 10


def load_model(path: str, classifier: public.PublicModels, size: str):
  """The diffusion model at `path`: a saved one, else a training's latest checkpoint."""
  if os.path.isfile(os.path.join(path, diffusion_model.DIFFUSION_JSON)):
    return diffusion_model.load_diffusion_model(path)
  names = classifier.spec.get("class_names") or [str(c) for c in range(classifier.num_classes)]
  return diffusion_model.load_pretrain_checkpoint(path, size=size,
                                                  image_shape=classifier.image_shape,
                                                  class_names=names)


def check_matching(model: diffusion_model.PublicDiffusion,
                   classifier: public.PublicModels) -> tuple[list[str], np.ndarray]:
  """The model's class names and, for each, the classifier's index of that class (a
  model trained without some pool classes is judged by the whole pool's classifier);
  refuses a model whose images differ or whose classes the classifier lacks."""
  config = model.config
  if tuple(config.image_shape) != tuple(classifier.image_shape):
    raise ConfigError(f"the diffusion model makes {tuple(config.image_shape)} images, the "
                      f"classifier takes {tuple(classifier.image_shape)}")
  ours = [str(n) for n in model.spec.get("class_names") or []]
  theirs = [str(n) for n in classifier.spec.get("class_names") or []]
  if ours and theirs:
    missing = [n for n in ours if n not in theirs]
    if missing:
      raise ConfigError(f"the classifier has no class {missing}; its classes: {theirs}")
    return ours, np.asarray([theirs.index(n) for n in ours])
  if config.num_classes != classifier.num_classes:
    raise ConfigError(f"the diffusion model has {config.num_classes} classes, the classifier "
                      f"{classifier.num_classes}, and neither names them")
  return ours or theirs or [str(c) for c in range(config.num_classes)], np.arange(
      config.num_classes)


def sample_classes(model: diffusion_model.PublicDiffusion, per_class: int, *, steps: int,
                   guidance_scale: float, batch: int, seed: int):
  """uint8 images and labels: `per_class` of every class, class-major."""
  config = model.config
  sampler = DiffusionSampler(unet.make_apply_fn(model.model), tuple(config.image_shape), steps,
                             float(guidance_scale), config.null_label, batch)
  state = TrainState(step=np.zeros((), np.int32), params=None, model_state=model.params,
                     opt_state=None)
  labels = np.repeat(np.arange(config.num_classes), per_class).astype(np.int32)
  images = training.generate(sampler, state, jax.random.key(seed), labels,
                             latent_dim=sampler.latent_dim, batch_size=batch, progress=True)
  return images, labels


def fraction_per_class(predicted: np.ndarray, labels: np.ndarray, num_classes: int) -> list:
  """Per class, the fraction of its rows predicted as it (None for a class without rows)."""
  return [float(np.mean(predicted[labels == c] == c)) if np.any(labels == c) else None
          for c in range(num_classes)]


def summary(fractions: list, names: list[str], classes: list[int]) -> dict:
  values = [fractions[c] for c in classes if fractions[c] is not None]
  if not values:
    return {"classes": [names[c] for c in classes], "mean": None, "worst": None,
            "worst_class": None}
  worst = min(classes, key=lambda c: fractions[c] if fractions[c] is not None else np.inf)
  return {"classes": [names[c] for c in classes], "mean": float(np.mean(values)),
          "worst": fractions[worst], "worst_class": names[worst]}


def evaluate(args) -> dict:
  t0 = time.perf_counter()
  classifier = public.load_public(args.classifier)
  model = load_model(args.model, classifier, args.unet_size)
  names, judged_as = check_matching(model, classifier)
  num_classes = len(names)
  images, labels = sample_classes(model, args.per_class, steps=args.steps,
                                  guidance_scale=args.guidance_scale, batch=args.batch,
                                  seed=args.seed)
  sample_seconds = time.perf_counter() - t0
  predicted = np.argmax(public.classifier_logits(classifier, images), axis=1)
  rendered = [float(np.mean(predicted[labels == c] == judged_as[c])) for c in range(num_classes)]
  source = args.data or classifier.spec.get("pretrain_config", {}).get("data", {}).get("source")
  real = None
  test = None
  if source:
    try:
      test = load_dataset(source, "test")
    except MissingSplitError:  # no held-out images: no ceiling to show
      pass
  if test is not None:
    real_predicted = np.argmax(public.classifier_logits(classifier, test.images), axis=1)
    real = fraction_per_class(real_predicted, np.asarray(test.labels), classifier.num_classes)
    real = [real[j] for j in judged_as]
  fashion = [c for c, n in enumerate(names) if n in FASHION_MNIST_CLASSES]
  name = args.name or "{}{}".format(
      os.path.basename(os.path.normpath(args.model)),
      f"_step{model.spec['checkpoint_step']}" if "checkpoint_step" in model.spec else "")
  grid = os.path.join(os.path.dirname(args.json) or ".", f"public_diffusion_eval_{name}.png")
  shown = np.concatenate([np.flatnonzero(labels == c)[:GRID_COLUMNS] for c in range(num_classes)])
  visualize.save_sample_grid(grid, images[shown], labels[shown], num_classes,
                             per_class=GRID_COLUMNS, class_names=names)
  record = {
      "command": "python -m experiments.public_diffusion_eval " + " ".join(args.argv),
      "model": os.path.abspath(args.model), "size": model.spec.get("size"),
      "checkpoint_step": model.spec.get("checkpoint_step"),
      "parameters": int(unet.count_params(model.params)),
      "classifier": os.path.abspath(args.classifier),
      "classifier_public_test_accuracy": classifier.spec.get("extractor", {}).get(
          "public_test_accuracy"),
      "real_test_data": source, "per_class_images": args.per_class, "steps": args.steps,
      "guidance_scale": args.guidance_scale, "seed": args.seed,
      "rendered_mean": float(np.mean(predicted == labels)),
      "fashion_mnist": summary(rendered, names, fashion),
      "fashion_mnist_real_test": summary(real, names, fashion) if real else None,
      "per_class": {n: {"rendered": rendered[c], "real_test_accuracy": real[c] if real else None}
                    for c, n in enumerate(names)},
      "predicted_counts": {names[c]: np.bincount(predicted[labels == c],
                                                 minlength=classifier.num_classes).tolist()
                           for c in range(num_classes)},
      "sample_grid": grid, "sample_seconds": round(sample_seconds, 1),
      "seconds": round(time.perf_counter() - t0, 1), "device": jax.devices()[0].device_kind,
  }
  merge_result(args.json, name, record)
  return record


def main(argv=None) -> dict:
  argv = sys.argv[1:] if argv is None else list(argv)
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", required=True,
                 help="a public diffusion model directory, or a training's checkpoints")
  p.add_argument("--classifier", default=os.path.join("public", "pool28_classifier"),
                 help="the pool classifier (`vpntk pretrain --extractor-only`)")
  p.add_argument("--unet-size", choices=sorted(unet.UNET_SIZES), default="fast",
                 help="the UNet size of a checkpoint (a saved model names its own)")
  p.add_argument("--per-class", type=int, default=100, help="images sampled per class")
  p.add_argument("--steps", type=int, default=18, help="Heun steps")
  p.add_argument("--guidance-scale", type=float, default=0.0,
                 help="classifier-free guidance w (0: none)")
  p.add_argument("--batch", type=int, default=500, help="images per sampling call")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data", default=None, help="real images for the classifier's per-class "
                 "accuracy (their test split; default the data it was trained on)")
  p.add_argument("--name", default=None, help="the record's name (default: the model "
                 "directory's, with the checkpoint step)")
  p.add_argument("--json", default=RESULTS_JSON, help="results file the record is merged into")
  args = p.parse_args(argv)
  for flag, value, low in (("--per-class", args.per_class, 1), ("--steps", args.steps, 1),
                           ("--batch", args.batch, 1)):
    if value < low:
      p.error(f"{flag} must be >= {low}, got {value}")
  if args.guidance_scale < 0:
    p.error(f"--guidance-scale must be >= 0, got {args.guidance_scale}")
  args.argv = argv
  try:
    record = evaluate(args)
  except VpntkError as e:
    print(f"public_diffusion_eval: {e}", file=sys.stderr)
    sys.exit(2)
  print(json.dumps({k: record[k] for k in ("rendered_mean", "fashion_mnist", "sample_grid")},
                   indent=2))
  return record


if __name__ == "__main__":
  main()
