"""VP-NTK on CelebA (private; label = the "Male" attribute) with public models
pretrained on CIFAR-10 at the same size. Runs where tfds can get the data
(Colab; CelebA downloads from Google Drive), at 32, 64 or 128:

    vpntk pretrain --data tfds:cifar10 --download --image-size 64 --out public/cifar10_64
    vpntk synthesize --config experiments/celeba_vpntk.py --out runs/celeba64
    vpntk synthesize --config experiments/celeba_vpntk.py --config.data.image_size=128 \
        --config.options.public_model=public/cifar10_128 --out runs/celeba128

The DP-NTK baseline at the same size: add --config.method=dp-ntk. Offline, the
config is tested on tfds mock data (tests/test_experiment_configs.py).
"""

from vpntk_jax.blocks import DataConfig, PromptConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import vp_ntk


def get_config(image_size: int = 64) -> RunConfig:
  return RunConfig(method="vp-ntk",
                   data=DataConfig(source="tfds:celeb_a", download=True, label_attribute="Male",
                                   image_size=image_size),
                   epsilon=1.0, delta=1e-6,
                   # No MLP: left out when it was scikit-learn's (CPU only, slow on 64x64x3
                   # pixels); the JAX one runs on the accelerator: add "mlp" to have it.
                   classifiers=("logistic_regression", "cnn"),
                   options=vp_ntk.Options(
                       public_model=f"public/cifar10_{image_size}",
                       # Two private classes, ten public ones: the map is learned.
                       prompt=PromptConfig(latent_noise=True, kappa=0.5, image_prompt="full",
                                           label_map="learned")))
