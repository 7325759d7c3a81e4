"""DP-MEPF on FashionMNIST: perceptual features of the public extractor (first and second
moments in one release), generator trained from scratch.

    vpntk pretrain --out public/mnist28
    vpntk synthesize --config experiments/fashion_dpmepf.py --epsilon 10 --out runs/x
"""

from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import dp_mepf


def get_config() -> RunConfig:
  return RunConfig(method="dp-mepf", data=DataConfig(source="fashion_mnist"), epsilon=1.0,
                   delta=1e-5, options=dp_mepf.Options(public_model="public/mnist28"))
