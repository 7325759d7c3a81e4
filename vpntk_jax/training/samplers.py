"""What training trains: the Sampler protocol, GeneratorSampler, and the TrainState.

A Sampler maps (latent, label) to images; `init_state` starts a TrainState
from one, and `class_grouped_batch` draws the latents and labels of a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any  # what the optimizer trains
  model_state: Any  # the rest: BatchNorm statistics, frozen public weights
  opt_state: Any


def class_grouped_batch(key: jax.Array, num_classes: int, per_class: int, latent_dim: int):
  """Latents and labels for a batch with `per_class` rows of each class, grouped."""
  z = jax.random.normal(key, (num_classes * per_class, latent_dim))
  labels = jnp.repeat(jnp.arange(num_classes), per_class)
  return z, labels


class Sampler(Protocol):
  """What training needs from a model that maps (latent, label) to images in [0, 1].

  `init` returns (params, model_state); `apply` returns (images NHWC,
  new model_state). DP-NTK trains a whole generator (`GeneratorSampler`);
  VP-NTK trains prompts around a frozen one (`vpntk_jax.models.prompt`).
  """

  def init(self, key: jax.Array, latent_dim: int) -> tuple[Any, Any]: ...

  def apply(self, params, model_state, z: jax.Array, labels: jax.Array, *,
            train: bool) -> tuple[jax.Array, Any]: ...

  def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
    """The optimizer for its params, given the run's (`make_optimizer`)."""


@dataclasses.dataclass(frozen=True)
class GeneratorSampler:
  """A Flax generator trained from scratch; model_state holds its BatchNorm statistics."""
  generator: Any

  def init(self, key: jax.Array, latent_dim: int):
    variables = self.generator.init(key, jnp.zeros((2, latent_dim)), jnp.zeros((2,), jnp.int32),
                                    train=False)
    return variables["params"], variables.get("batch_stats", {})

  def apply(self, params, model_state, z, labels, *, train: bool):
    variables = {"params": params, "batch_stats": model_state}
    if not train:
      return self.generator.apply(variables, z, labels, train=False), model_state
    images, updates = self.generator.apply(variables, z, labels, train=True,
                                           mutable=["batch_stats"])
    return images, updates["batch_stats"]

  def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
    return base


def as_sampler(model) -> Sampler:
  """A Sampler as is; a bare Flax generator wrapped in GeneratorSampler."""
  return GeneratorSampler(model) if isinstance(model, nn.Module) else model


def init_state(key: jax.Array, model, optimizer, latent_dim: int) -> TrainState:
  params, model_state = as_sampler(model).init(key, latent_dim)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=optimizer.init(params))
