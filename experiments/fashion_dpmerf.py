"""DP-MERF on FashionMNIST: random Fourier features, same release and generator as DP-NTK.

Use: vpntk synthesize --config experiments/fashion_dpmerf.py --epsilon 10 --out runs/x
"""

from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import dp_merf


def get_config() -> RunConfig:
  return RunConfig(method="dp-merf", data=DataConfig(source="fashion_mnist"), epsilon=1.0,
                   delta=1e-5, options=dp_merf.Options())
