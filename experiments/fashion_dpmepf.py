"""DP-MEPF on FashionMNIST: perceptual features of the public extractor (first and second
moments in one release), generator trained from scratch.

    vpntk pretrain --out public/mnist28
    vpntk synthesize --config experiments/fashion_dpmepf.py --epsilon 10 --out runs/x
"""

from vpntk_jax.config import RunConfig


def get_config() -> RunConfig:
  return RunConfig(method="dp-mepf", data="fashion_mnist", epsilon=1.0, delta=1e-5,
                   public_model="public/mnist28")
