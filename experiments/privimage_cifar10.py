"""PrivImage as in the paper: CIFAR-10 private, ImageNet32 as the public pool (for a
Colab or GPU machine with the data; nothing here downloads at run time).

    # once, with network access: the pool and the private set into the TFDS data dir
    python -c "import tensorflow_datasets as tfds; [tfds.builder(n).download_and_prepare() \
        for n in ('imagenet_resized/32x32', 'cifar10')]"
    vpntk pretrain --extractor-only --data tfds:imagenet_resized/32x32 \
        --extractor-epochs 10 --out public/imagenet32_classifier
    vpntk synthesize --config experiments/privimage_cifar10.py --epsilon 10 --out runs/pi_c10

The pool is the classifier's own training data (its public.json), all 1,000
classes, about 1.28M images (3.9 GB in memory at 32x32x3). The query takes 5
votes per image and 5 public classes per private class: 50 classes, about
1% of ImageNet as in PrivImage's selection. The model is the reference UNet
(PrivImage's 1.5M-parameter FashionMNIST network at 32x32x3); PrivImage's own
CIFAR-10 network is larger. DP-SGD as in its FashionMNIST config: expected
batch 4,096 of the 50,000 CIFAR-10 training images, 32 noise draws, clip
1e-3, Adam 3e-4, EMA 0.999, add/remove with the published N and
delta = 1 / (N ln N).
"""

import math

from vpntk_jax.blocks import DataConfig, DiffusionModelConfig, DpSgdConfig, PublicPretrainConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import privimage

NUM_PRIVATE = 50000


def get_config() -> RunConfig:
  return RunConfig(
      method="privimage", data=DataConfig(source="tfds:cifar10"), epsilon=10.0,
      delta=1.0 / (NUM_PRIVATE * math.log(NUM_PRIVATE)), adjacency="add_remove",
      public_num_examples=NUM_PRIVATE, num_synthetic=50000,
      options=privimage.Options(
          public_model="public/imagenet32_classifier", start_model=None,
          query=privimage.QueryConfig(top_k=5, noise_multiplier=50.0, per_class=5),
          model=DiffusionModelConfig(size="reference", sample_steps=18, sample_batch=2000),
          pretrain=PublicPretrainConfig(steps=50000, batch_size=1024, learning_rate=3e-4,
                                        checkpoint_every=2000),
          dp_sgd=DpSgdConfig(steps=1800, batch_size=4096, clip_norm=1e-3, multiplicity=32,
                             learning_rate=3e-4, microbatch=16, checkpoint_every=100)))
