"""Non-private ceiling: the same classifiers trained on REAL images.

    python -m experiments.real_ceiling [--data fashion_mnist] [--seed 0]

Same protocol as a run's metrics.json (balanced 6,000 training images, fixed
settings, real test set), with real training images instead of synthetic ones.
Writes experiments/results/real_ceiling_<data>.json.
"""

import argparse
import os

from vpntk_jax import io_utils, pipeline
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.evaluation import evaluate_synthetic


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--data", default="fashion_mnist")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  # The run defaults (evaluation settings), on the real data.
  config = RunConfig(data=DataConfig(source=args.data))
  train, test = pipeline.load_split(config, "train"), pipeline.load_split(config, "test")
  metrics = evaluate_synthetic(train.images, train.labels, test.images, test.labels,
                               num_classes=test.num_classes, train_size=config.eval_train_size,
                               seed=args.seed, cnn_epochs=config.cnn_epochs, progress=False)
  out = os.path.join(os.path.dirname(__file__), "results", f"real_ceiling_{args.data}.json")
  io_utils.write_json_atomic(out, metrics)
  print(metrics)


if __name__ == "__main__":
  main()
