"""VP-NTK's visual prompts: trainable inputs and outputs around a frozen public generator.

The public generator G maps (z, public class) to an image. A prompted
generator for private class c is

    x = clip(G(z + kappa * n_c, map(c)) + s * tanh(W_c) * M, 0, 1)

with trainable parameters (each can be switched off):
  * n_c: per-class latent noise, scaled by kappa ("latent" prompt);
  * W_c: an image-space prompt, per class or shared, on a border of
    `pad_width` pixels (M masks the centre: the visual-prompting "padding"
    prompt) or on the full image, bounded by tanh and scaled by s;
    with `prompt_resolution` r, W_c lives on an r x r grid and is resized
    (bilinear) to the image, so it cannot make pixel-level grain;
  * map: private class -> public class, fixed (identity or a given list) or
    learned (a softmax over public classes fed to G as soft labels).
With `finetune_generator`, G's own weights train too (small learning rate).
Only these parameters see the private release, and only through the
released embedding, so training them is post-processing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vpntk_jax.blocks import PromptConfig
from vpntk_jax.errors import ConfigError

# Learned label maps start this confident in their initial class (softmax ~0.99).
LABEL_LOGIT_INIT = 7.0


def fixed_label_map(spec: str, num_private: int, num_public: int) -> np.ndarray:
  """Public class of each private class for "identity", "learned" (its start) or a list."""
  if spec in ("identity", "learned"):
    if spec == "identity" and num_private > num_public:
      raise ConfigError(f"identity label map: {num_private} private classes but the public "
                        f"generator has only {num_public}; give prompt.label_map as a list "
                        f"or use 'learned'")
    return np.arange(num_private) % num_public
  try:
    mapping = np.array([int(v) for v in spec.split(",")])
  except ValueError:
    raise ConfigError(f"prompt.label_map must be 'identity', 'learned' or a comma-separated "
                      f"list of public class ids, got {spec!r}") from None
  if len(mapping) != num_private:
    raise ConfigError(f"prompt.label_map lists {len(mapping)} classes; the private data has "
                      f"{num_private}")
  bad = sorted(set(int(v) for v in mapping if not 0 <= v < num_public))
  if bad:
    raise ConfigError(f"prompt.label_map names classes {bad} that the public generator does "
                      f"not have (it has classes 0..{num_public - 1})")
  return mapping


def prompt_mask(image_shape: tuple[int, int, int], kind: str, pad_width: int | None):
  """1 where the image prompt acts: a border ("pad") or everywhere ("full")."""
  h, w, c = image_shape
  mask = np.ones((h, w, c), np.float32)
  if kind == "pad":
    p = pad_width or max(1, h // 7)
    if 2 * p >= min(h, w):
      raise ConfigError(f"prompt.pad_width {p} leaves no centre in a {h}x{w} image")
    mask[p:h - p, p:w - p] = 0.0
  return mask


def bounded_image_prompt(weights: jax.Array, image_shape: tuple[int, int, int]) -> jax.Array:
  """tanh(W), resized (bilinear) from W's grid to `image_shape`; values stay in [-1, 1]."""
  prompt = jnp.tanh(weights)
  if prompt.shape[1:] != tuple(image_shape):
    # Upsampling weights are a convex combination, so the tanh bound survives it.
    prompt = jax.image.resize(prompt, prompt.shape[:1] + tuple(image_shape), "linear")
  return prompt


@dataclasses.dataclass(frozen=True, eq=False)
class PromptedGenerator:
  """A `training.Sampler`: prompts (and optionally G) train, the public G is frozen."""
  generator: Any  # the public ConvCondGenerator
  generator_variables: dict  # its {"params", "batch_stats"}
  config: PromptConfig
  num_classes: int  # private classes
  image_shape: tuple[int, int, int]

  def __post_init__(self):
    self.config.validate()
    if tuple(self.image_shape) != tuple(self.generator.image_shape):
      raise ConfigError(f"the public generator makes {tuple(self.generator.image_shape)} "
                        f"images; the private data is {tuple(self.image_shape)}")
    fixed_label_map(self.config.label_map, self.num_classes, self.generator.num_classes)
    r = self.config.prompt_resolution
    if r is not None and r > min(self.image_shape[:2]):
      raise ConfigError(f"prompt.prompt_resolution {r} is larger than the "
                        f"{self.image_shape[0]}x{self.image_shape[1]} image")

  @property
  def _prompt_grid(self) -> tuple[int, int, int]:
    h, w, c = self.image_shape
    r = self.config.prompt_resolution
    return (h, w, c) if r is None else (r, r, c)

  @property
  def _label_map(self) -> np.ndarray:
    return fixed_label_map(self.config.label_map, self.num_classes, self.generator.num_classes)

  def init(self, key: jax.Array, latent_dim: int):
    del key  # prompts start at zero: the prompted generator starts as the public one
    cfg = self.config
    params: dict = {}
    if cfg.latent_noise:
      params["latent"] = jnp.zeros((self.num_classes, latent_dim))
    if cfg.image_prompt != "none":
      rows = self.num_classes if cfg.per_class_image_prompt else 1
      params["image"] = jnp.zeros((rows,) + self._prompt_grid)
    if cfg.label_map == "learned":
      params["label_logits"] = LABEL_LOGIT_INIT * jax.nn.one_hot(
          self._label_map, self.generator.num_classes)
    if cfg.finetune_generator:
      params["generator"] = self.generator_variables["params"]
    return params, {"generator": self.generator_variables}

  def apply(self, params, model_state, z, labels, *, train: bool):
    del train  # the public generator's BatchNorm statistics stay frozen
    cfg = self.config
    variables = dict(model_state["generator"])
    if "generator" in params:
      variables["params"] = params["generator"]
    if "latent" in params:
      z = z + cfg.kappa * params["latent"][labels]
    if "label_logits" in params:
      public_labels = jax.nn.softmax(params["label_logits"][labels], axis=-1)
    else:
      public_labels = jnp.asarray(self._label_map, jnp.int32)[labels]
    x = self.generator.apply(variables, z, public_labels, train=False)
    if "image" in params:
      rows = labels if cfg.per_class_image_prompt else jnp.zeros_like(labels)
      prompt = bounded_image_prompt(params["image"], tuple(self.image_shape))
      mask = prompt_mask(tuple(self.image_shape), cfg.image_prompt, cfg.pad_width)
      x = jnp.clip(x + cfg.image_prompt_scale * prompt[rows] * mask, 0.0, 1.0)
    return x, model_state

  def optimizer(self, base: optax.GradientTransformation) -> optax.GradientTransformation:
    """`base` for the prompts; Adam at generator_learning_rate for a fine-tuned G."""
    if not self.config.finetune_generator:
      return base
    return optax.multi_transform(
        {"prompt": base, "generator": optax.adam(self.config.generator_learning_rate)},
        lambda params: {k: jax.tree.map(lambda _: "generator" if k == "generator" else "prompt",
                                        v) for k, v in params.items()})
