"""EDM (Karras et al. 2022): preconditioning, the per-example training loss, the Heun sampler.

`apply_fn(params, x, c_noise, labels, dropout_key=None) -> F` is the raw
network (`models.unet.make_apply_fn`); `denoise` wraps it into
D(x; sigma) = c_skip x + c_out F(c_in x, c_noise). Pixels live in [-1, 1]
inside the model; images come in and go out as uint8.

The loss is written per example so DP-SGD can clip each example's gradient:
`per_example_loss` takes ONE image and averages over `multiplicity`
independent (sigma, noise) draws ("noise multiplicity", DPDM), so the
average sits inside the clip. Its key is split by `split_example_key`;
the tests rebuild the same draws from it. `batch_loss`, for non-private
training, runs the same draws as one flat batch.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_DATA = 0.5  # EDM's; DPDM's code uses sqrt(1/3)
P_MEAN, P_STD = -1.2, 1.2  # ln(sigma) ~ N(P_MEAN, P_STD^2) in training


def to_model_range(images: jax.Array) -> jax.Array:
  """uint8 pixels -> float32 in [-1, 1]."""
  if images.dtype != jnp.uint8:
    # Floats in [0, 1] would pass silently and train on a squashed range.
    raise TypeError(f"images must be uint8, got {images.dtype}")
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> jax.Array:
  """[-1, 1] -> uint8 pixels (rounded, clipped)."""
  return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


def preconditioning(sigma: jax.Array, sigma_data: float = SIGMA_DATA):
  """(c_skip, c_out, c_in, c_noise) of EDM's Table 1, elementwise in sigma."""
  total = sigma ** 2 + sigma_data ** 2
  c_skip = sigma_data ** 2 / total
  c_out = sigma * sigma_data / jnp.sqrt(total)
  c_in = 1.0 / jnp.sqrt(total)
  c_noise = jnp.log(sigma) / 4.0
  return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: jax.Array, sigma_data: float = SIGMA_DATA) -> jax.Array:
  """lambda(sigma) = 1 / c_out^2: every sigma's loss starts at unit scale."""
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def denoise(apply_fn: Callable, params, x_noisy: jax.Array, sigma: jax.Array,
            labels: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
  """D(x; sigma, label) for a batch: x_noisy [B, H, W, C], sigma [B] (or scalar), labels [B]."""
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), x_noisy.shape[:1])
  c_skip, c_out, c_in, c_noise = preconditioning(sigma)
  expand = lambda c: c[:, None, None, None]
  f = apply_fn(params, expand(c_in) * x_noisy, c_noise, labels, dropout_key)
  return expand(c_skip) * x_noisy + expand(c_out) * f.astype(jnp.float32)


def drop_labels(key: jax.Array, labels: jax.Array, p: float, null_label: int) -> jax.Array:
  """Each label replaced by `null_label` with probability p (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, p, jnp.shape(labels)), null_label, labels)


def split_example_key(key: jax.Array, multiplicity: int):
  """One example's key -> (label key, dropout key, `multiplicity` draw keys).

  The label is dropped once per example, for all its draws (as DPDM does).
  """
  keys = jax.random.split(key, multiplicity + 2)
  return keys[0], keys[1], keys[2:]


def draw_losses(params, apply_fn: Callable, x: jax.Array, labels: jax.Array, keys: jax.Array,
                dropout_key: jax.Array | None = None) -> jax.Array:
  """The weighted denoising loss of one (sigma, noise) draw per row, in one network call.

  x: [N, H, W, C] clean, in [-1, 1]; labels: [N] (after dropout); keys: [N],
  one draw each. A draw's key gives one normal vector: its first entry sets
  ln(sigma) ~ N(P_MEAN, P_STD^2), the rest is the noise (one RNG call, not two).
  The loss is a pixel mean, as DPDM's: its scale, and so the useful clip norm,
  does not grow with the image size.
  """
  size = math.prod(x.shape[1:])
  z = jax.vmap(lambda k: jax.random.normal(k, (1 + size,)))(keys)
  sigma = jnp.exp(P_MEAN + P_STD * z[:, 0])
  noisy = x + sigma[:, None, None, None] * z[:, 1:].reshape(x.shape)
  d = denoise(apply_fn, params, noisy, sigma, labels, dropout_key)
  return loss_weight(sigma) * jnp.mean(jnp.square(d - x), axis=(1, 2, 3))


def _drop(label_keys, labels, num_classes, label_dropout):
  if num_classes is not None:
    return jax.vmap(lambda k, y: drop_labels(k, y, label_dropout, num_classes))(label_keys, labels)
  if not isinstance(label_dropout, (int, float)) or label_dropout != 0:
    raise ValueError("label_dropout needs num_classes (the null class's label)")
  return labels


def per_example_loss(params, apply_fn: Callable, image: jax.Array, label: jax.Array,
                     key: jax.Array, *, multiplicity: int, num_classes: int | None = None,
                     label_dropout: float = 0.0) -> jax.Array:
  """The EDM loss of ONE example, averaged over `multiplicity` (sigma, noise) draws.

  image: [H, W, C] uint8; label: scalar int in [0, num_classes); key: this
  example's own key (`split_example_key`). Nothing couples it to other
  examples, so vmap(grad(per_example_loss)) over examples gives per-example
  gradients. Given num_classes, the label becomes the null class num_classes
  with probability label_dropout (which may be traced).

  The draws run as one batch of `multiplicity`; with model dropout 0 the result
  is exactly the mean of the draws taken one at a time (`draw_losses` of one row).
  """
  label_key, dropout_key, draw_keys = split_example_key(key, multiplicity)
  label = _drop(label_key[None], jnp.reshape(label, (1,)), num_classes, label_dropout)
  x = jnp.broadcast_to(to_model_range(image), (multiplicity,) + image.shape)
  return jnp.mean(draw_losses(params, apply_fn, x, jnp.repeat(label, multiplicity), draw_keys,
                              dropout_key))


def batch_loss(params, apply_fn: Callable, images: jax.Array, labels: jax.Array,
               key: jax.Array, *, multiplicity: int, num_classes: int | None = None,
               label_dropout: float = 0.0) -> jax.Array:
  """Mean of `per_example_loss` over a batch (images [B, H, W, C] uint8), example i
  with key split(key, B)[i]: the same draws, run as one network call of B * multiplicity.

  With model dropout 0 it equals the mean of the per-example losses (tested);
  with dropout the masks differ (one dropout key for the batch), not their law.
  """
  n = images.shape[0]
  label_keys, _, draw_keys = jax.vmap(lambda k: split_example_key(k, multiplicity))(
      jax.random.split(key, n))
  labels = _drop(label_keys, labels, num_classes, label_dropout)
  x = jnp.repeat(to_model_range(images), multiplicity, axis=0)
  draw_keys = draw_keys.reshape((n * multiplicity,) + draw_keys.shape[2:])  # raw uint32 keys too
  return jnp.mean(draw_losses(params, apply_fn, x, jnp.repeat(labels, multiplicity), draw_keys,
                              jax.random.fold_in(key, n)))


def sigma_steps(num_steps: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
  """EDM's time steps: `num_steps` sigmas from sigma_max down to sigma_min (rho-spaced), then 0."""
  i = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
  t = (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.append(t, 0.0).astype(np.float32)


@functools.partial(jax.jit, static_argnums=(0,), static_argnames=(
    "num_steps", "sigma_min", "sigma_max", "rho", "guidance_scale", "null_label"))
def _heun(apply_fn, params, noise, labels, *, num_steps, sigma_min, sigma_max, rho,
          guidance_scale, null_label):
  n = labels.shape[0]
  t = jnp.asarray(sigma_steps(num_steps, sigma_min, sigma_max, rho))

  def denoiser(x, sigma):
    sigma = jnp.full((n,), sigma)
    if guidance_scale == 0.0:
      return denoise(apply_fn, params, x, sigma, labels)
    # Conditional and unconditional in one call of twice the batch.
    both = denoise(apply_fn, params, jnp.concatenate([x, x]), jnp.concatenate([sigma, sigma]),
                   jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
    cond, uncond = both[:n], both[n:]
    return (1.0 + guidance_scale) * cond - guidance_scale * uncond

  def step(i, x):
    t_cur, t_next = t[i], t[i + 1]
    d = (x - denoiser(x, t_cur)) / t_cur
    x_next = x + (t_next - t_cur) * d

    def correct(x_next):  # Heun's 2nd order correction, where the next sigma is > 0
      d_next = (x_next - denoiser(x_next, t_next)) / t_next
      return x + (t_next - t_cur) * 0.5 * (d + d_next)
    # The last step, to sigma 0, stays Euler: it lands on D(x; t[N-1]).
    return jax.lax.cond(t_next > 0, correct, lambda x_next: x_next, x_next)

  # fori_loop keeps one x alive (memory: one batch) and compiles the network twice,
  # not once per step.
  return jax.lax.fori_loop(0, num_steps, step, noise * t[0])


def heun(apply_fn: Callable, params, noise: jax.Array, labels, *, num_steps: int = 18,
         sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
         guidance_scale: float = 0.0, null_label: int | None = None) -> jax.Array:
  """EDM's deterministic Heun sampler from given standard-normal `noise` [N, H, W, C]:
  float32 images in [-1, 1] (before rounding to pixels), a pure function of the
  noise, so a synthesis can be re-drawn from its keys. See `sample`."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}")
  if guidance_scale != 0.0 and null_label is None:
    raise ValueError("classifier-free guidance needs null_label (the null class)")
  return _heun(apply_fn, params, noise, jnp.asarray(labels, jnp.int32), num_steps=int(num_steps),
               sigma_min=float(sigma_min), sigma_max=float(sigma_max), rho=float(rho),
               guidance_scale=float(guidance_scale),
               null_label=None if null_label is None else int(null_label))


def sample(apply_fn: Callable, params, key: jax.Array, labels, *, image_shape,
           num_steps: int = 18, sigma_min: float = 0.002, sigma_max: float = 80.0,
           rho: float = 7.0, guidance_scale: float = 0.0,
           null_label: int | None = None) -> jax.Array:
  """uint8 NHWC images for `labels` [N], by EDM's deterministic Heun sampler (Algorithm 1,
  no churn; 2 * num_steps - 1 network evaluations) from noise drawn with `key`, jitted.

  guidance_scale w > 0: classifier-free guidance D = (1 + w) D(x | y) - w D(x | null),
  which needs `null_label` (the model's num_classes) and twice the memory. All
  of `labels` is one batch: split large requests into batches.
  """
  labels = jnp.asarray(labels, jnp.int32)
  noise = jax.random.normal(key, (labels.shape[0],) + tuple(int(s) for s in image_shape))
  return to_uint8(heun(apply_fn, params, noise, labels, num_steps=num_steps,
                       sigma_min=sigma_min, sigma_max=sigma_max, rho=rho,
                       guidance_scale=guidance_scale, null_label=null_label))
