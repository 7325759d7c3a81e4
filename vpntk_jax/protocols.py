"""Benchmark protocols: the fixed choices a benchmark makes for every method (which
images are private, delta, what is held out), so numbers can be set beside its own.

"dpimagebench" is DPImageBench's (github.com/2019ChenGong/DPImageBench) for
FashionMNIST and MNIST in its default evaluation mode ("val"):
  - its split of the 60,000 training images: 55,000 private training images and
    5,000 validation images (`vpntk_jax.data.dpimagebench_split` states how it was
    reproduced); the validation images are never private training data;
  - delta = 1 / (N ln N) with N = 55,000 private images (its load_data resets delta
    so for every run);
  - the real test set is the dataset's own 10,000 test images, at 28 x 28.
DPImageBench reports, per run, the test accuracy of three classifiers trained on
60,000 synthetic images (55,000 train, 5,000 held out): a ResNet, a WideResNet and a
ResNeXt (its evaluation/classifier/), each at the epoch of best accuracy on the
validation split, and their mean and std: `--classifiers resnet,wrn,resnext`
(evaluation.benchmark_classifiers). Under the protocol every classifier's accuracy on
the validation split is reported beside its test accuracy, for selection without the
test set (docs/compare.md).

JAX-free: RunConfig checks a config against its protocol.
"""

from __future__ import annotations

import math

from vpntk_jax.errors import ConfigError

NONE = "none"
DPIMAGEBENCH = "dpimagebench"
PROTOCOLS = (NONE, DPIMAGEBENCH)

# The sources DPImageBench's split is defined on: the IDX files as published, read in
# their stored order (the order torchvision reads them in).
DPIMAGEBENCH_SOURCES = ("fashion_mnist", "mnist")
DPIMAGEBENCH_TRAIN_SIZE = 55_000
DPIMAGEBENCH_VALIDATION_SIZE = 5_000
DPIMAGEBENCH_IMAGE_SIZE = 28
DPIMAGEBENCH_CLASSIFIERS = (
    "DPImageBench reports the mean (and std) of three classifiers' test accuracy, each "
    "at its best epoch on the 5,000 validation images: ResNet, WideResNet and ResNeXt "
    "(evaluation/classifier/ in its repository), trained 50 epochs with Adam on 55,000 of "
    "60,000 synthetic images; vpntk's resnet, wrn and resnext classifiers are these")


def dpimagebench_delta(num_private: int = DPIMAGEBENCH_TRAIN_SIZE) -> float:
  """DPImageBench's delta for N private examples: 1 / (N ln N)."""
  return 1.0 / (num_private * math.log(num_private))


def resolved_delta(protocol: str, delta: float, default: float) -> float:
  """The delta a run uses: a protocol's own where `delta` was left at `default`."""
  if protocol == DPIMAGEBENCH and delta == default:
    return dpimagebench_delta()
  return delta


def check(config) -> None:
  """Raises a ConfigError where a RunConfig departs from its protocol."""
  if config.protocol not in PROTOCOLS:
    raise ConfigError(f"protocol must be one of {', '.join(PROTOCOLS)}, got "
                      f"{config.protocol!r}")
  if config.protocol != DPIMAGEBENCH:
    return
  data = config.data
  if data.source not in DPIMAGEBENCH_SOURCES:
    raise ConfigError(f"--protocol dpimagebench splits the 60,000 training images of "
                      f"{' or '.join(DPIMAGEBENCH_SOURCES)} (IDX files, their stored order); "
                      f"--data is {data.source!r}")
  if data.test_source is not None:
    raise ConfigError("--protocol dpimagebench tests on the dataset's own test split: leave "
                      "--test-data unset")
  if data.image_size not in (None, DPIMAGEBENCH_IMAGE_SIZE):
    raise ConfigError(f"--protocol dpimagebench runs at {DPIMAGEBENCH_IMAGE_SIZE} x "
                      f"{DPIMAGEBENCH_IMAGE_SIZE}; --image-size is {data.image_size}")
  wanted = dpimagebench_delta()
  if not math.isclose(config.delta, wanted, rel_tol=1e-9):
    raise ConfigError(f"--protocol dpimagebench fixes delta = 1/(N ln N) = {wanted:.6g} for "
                      f"its N = {DPIMAGEBENCH_TRAIN_SIZE:,} private images; leave --delta "
                      f"unset (got {config.delta:g})")


def describe(protocol: str) -> dict | None:
  """What metrics.json records of a run's protocol (None without one)."""
  if protocol != DPIMAGEBENCH:
    return None
  return {"name": DPIMAGEBENCH,
          "private": f"{DPIMAGEBENCH_TRAIN_SIZE:,} of the 60,000 training images "
                     f"(DPImageBench's split)",
          "validation": f"the other {DPIMAGEBENCH_VALIDATION_SIZE:,}: never private training "
                        f"data; each classifier's accuracy on them is validation_accuracy",
          "delta": dpimagebench_delta(), "delta_rule": "1 / (N ln N), N = 55,000",
          "benchmark_classifiers": DPIMAGEBENCH_CLASSIFIERS}
