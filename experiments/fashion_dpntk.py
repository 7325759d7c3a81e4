"""DP-NTK on FashionMNIST: the default job (`make demo`) and the README table.

Use: vpntk synthesize --config experiments/fashion_dpntk.py --epsilon 10 --out runs/x
"""

from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig


def get_config() -> RunConfig:
  return RunConfig(method="dp-ntk", data=DataConfig(source="fashion_mnist"), epsilon=1.0,
                   delta=1e-5)
