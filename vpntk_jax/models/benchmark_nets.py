"""DPImageBench's three evaluation classifiers in Flax: a CIFAR-style ResNet, a
WideResNet and a ResNeXt, as its evaluation/classifier/ defines them (layers,
widths, strides, initialisation), with PyTorch's conventions kept where they change
the function: symmetric padding 1 for every 3x3 convolution (also the strided ones;
Flax's "SAME" would pad only after), BatchNorm momentum 0.1 / epsilon 1e-5,
untruncated normal and uniform initialisers. Inputs are NHWC images in [0, 1].

The defaults are the sizes DPImageBench builds for 28 x 28 (FashionMNIST, MNIST)
images: ResNet depth 110 (basic blocks), WideResNet 40-4 with dropout 0.3, ResNeXt
29 with cardinality 8 and widen factor 4 (its dropout setting is accepted there but
never applied, so none here). Parameter counts equal the PyTorch modules' (tested):
1,730,426, 8,948,922 and 34,425,546 for 1-channel input and 10 classes.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpntk_jax.errors import ConfigError

# PyTorch's defaults: BatchNorm2d(momentum=0.1) is Flax's momentum 0.9.
_BN = dict(momentum=0.9, epsilon=1e-5)
# nn.Linear's default weight and bias: U(+-1 / sqrt(fan_in)).
_LINEAR_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# kaiming_normal_(mode="fan_out"), gain sqrt 2: N(0, 2 / (k * k * out)); JAX's "normal"
# is untruncated, as PyTorch's.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _linear_bias_init(fan_in: int):
  bound = 1.0 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def _conv(features: int, kernel: int, stride: int = 1, groups: int = 1, name=None) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                 kernel_init=_CONV_INIT, name=name)


def _bn(train: bool, name=None) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, name=name, **_BN)


class _ResNetBlock(nn.Module):
  planes: int
  stride: int

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(_bn(train)(_conv(self.planes, 3, self.stride)(x)))
    out = _bn(train)(_conv(self.planes, 3)(out))
    if self.stride != 1 or x.shape[-1] != self.planes:
      x = _bn(train)(_conv(self.planes, 1, self.stride)(x))
    return nn.relu(out + x)


class ResNet(nn.Module):
  """CIFAR ResNet with basic blocks: depth 6n + 2, stages of 16, 32, 64 channels."""
  num_classes: int
  depth: int = 110

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 6:
      raise ConfigError(f"ResNet depth must be 6n + 2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = nn.relu(_bn(train)(_conv(16, 3)(x)))
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(n):
        x = _ResNetBlock(planes, stride if i == 0 else 1)(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_LINEAR_INIT,
                    bias_init=_linear_bias_init(x.shape[-1]))(x)


class _WideBlock(nn.Module):
  """Pre-activation block; where the width changes, the shortcut (a 1x1 convolution)
  takes the pre-activated input, as the PyTorch module's does."""
  planes: int
  stride: int
  dropout: float

  @nn.compact
  def __call__(self, x, train: bool):
    same = x.shape[-1] == self.planes
    activated = nn.relu(_bn(train)(x))
    if not same:
      x = activated
    out = nn.relu(_bn(train)(_conv(self.planes, 3, self.stride)(activated)))
    if self.dropout > 0:
      out = nn.Dropout(self.dropout, deterministic=not train)(out)
    out = _conv(self.planes, 3)(out)
    shortcut = x if same else _conv(self.planes, 1, self.stride)(x)
    return shortcut + out


class WideResNet(nn.Module):
  """WRN-depth-widen: depth 6n + 4, stages of 16k, 32k, 64k channels (k the widen factor)."""
  num_classes: int
  depth: int = 40
  widen_factor: int = 4
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ConfigError(f"WideResNet depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    x = _conv(16, 3)(x)
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(n):
        x = _WideBlock(planes * self.widen_factor, stride if i == 0 else 1,
                       self.dropout)(x, train)
    x = nn.relu(_bn(train)(x)).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_LINEAR_INIT,
                    bias_init=nn.initializers.zeros)(x)


class _ResNeXtBlock(nn.Module):
  """Bottleneck type C: 1x1 reduce to D = cardinality * out / widen, grouped 3x3, 1x1
  expand; a 1x1 convolution + BatchNorm shortcut where the width changes."""
  out: int
  stride: int
  cardinality: int
  widen_factor: int

  @nn.compact
  def __call__(self, x, train: bool):
    d = self.cardinality * self.out // self.widen_factor
    b = nn.relu(_bn(train)(_conv(d, 1)(x)))
    b = nn.relu(_bn(train)(_conv(d, 3, self.stride, groups=self.cardinality)(b)))
    b = _bn(train)(_conv(self.out, 1)(b))
    if x.shape[-1] != self.out:
      x = _bn(train)(_conv(self.out, 1, self.stride)(x))
    return nn.relu(x + b)


class ResNeXt(nn.Module):
  """CIFAR ResNeXt: depth 9n + 2, a 64-channel stem, stages of 64k, 128k, 256k channels."""
  num_classes: int
  depth: int = 29
  cardinality: int = 8
  widen_factor: int = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 2) % 9:
      raise ConfigError(f"ResNeXt depth must be 9n + 2, got {self.depth}")
    n = (self.depth - 2) // 9
    x = nn.relu(_bn(train)(_conv(64, 3)(x)))
    for width, stride in ((64, 1), (128, 2), (256, 2)):
      for i in range(n):
        x = _ResNeXtBlock(width * self.widen_factor, stride if i == 0 else 1,
                          self.cardinality, self.widen_factor)(x, train)
    x = x.mean(axis=(1, 2))
    # kaiming_normal_ (fan_in, gain sqrt 2) on the weight, zero bias.
    return nn.Dense(self.num_classes,
                    kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
                    bias_init=nn.initializers.zeros)(x)


# The names --classifiers knows them by -> the network DPImageBench builds at 28 x 28.
NETWORKS = {"resnet": ResNet, "wrn": WideResNet, "resnext": ResNeXt}
