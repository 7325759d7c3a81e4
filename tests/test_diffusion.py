"""vpntk_jax/models/unet.py, vpntk_jax/diffusion: the EDM UNet, its per-example loss, the sampler.

Compiling is most of the cost on a CPU, so the tests share a few jitted functions
of fixed shapes (the `fns` fixture) and build parameters without compiling an init.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vpntk_jax.diffusion import edm
from vpntk_jax.diffusion.train import make_train_step
from vpntk_jax.models import unet
from vpntk_jax.training.ema import ema_decay_at, ema_update

SHAPE = (8, 8, 1)
NUM_CLASSES = 2
MULTIPLICITY = 2
BATCH = 4


def _random_params(init, seed):
  """Random parameters of init's shapes, without running init (each eager op would
  compile): kernels N(0, 1/fan_in), GroupNorm scale 1, biases small. Unlike the
  real init, no layer starts near zero, so every test sees the whole network."""
  shapes = jax.eval_shape(init, jax.random.key(0))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == "scale":
      return np.ones(s.shape, np.float32)
    if name == "bias":
      return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return (rng.standard_normal(s.shape) / math.sqrt(math.prod(s.shape[:-1]))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(leaf, shapes)


@pytest.fixture(scope="module")
def tiny():
  model = unet.UNet(unet.unet_config("tiny", SHAPE, NUM_CLASSES))
  params = _random_params(lambda k: unet.init_params(model, k), 0)
  return model, params, unet.make_apply_fn(model)


@pytest.fixture(scope="module")
def fns(tiny):
  """The jitted functions the tests share, each compiled once (for BATCH examples)."""
  _, _, apply_fn = tiny

  def loss(params, image, label, key, label_dropout):
    return edm.per_example_loss(params, apply_fn, image, label, key, multiplicity=MULTIPLICITY,
                                num_classes=NUM_CLASSES, label_dropout=label_dropout)
  return dict(
      apply=jax.jit(apply_fn),
      losses=jax.jit(jax.vmap(loss, in_axes=(None, 0, 0, 0, None))),
      # one draw of one example, alone
      draw=jax.jit(lambda p, x, label, key: edm.draw_losses(p, apply_fn, x[None], label[None],
                                                             key[None])[0]),
  )


def _images(seed, n=BATCH):
  return np.random.default_rng(seed).integers(0, 256, (n,) + SHAPE).astype(np.uint8)


def test_no_batch_statistics(tiny, fns):
  model, params, _ = tiny
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + SHAPE),
                             jnp.zeros((1,)), jnp.zeros((1,), jnp.int32))
  assert set(variables) == {"params"}
  rng = np.random.default_rng(2)
  x = rng.standard_normal((BATCH,) + SHAPE).astype(np.float32)
  c_noise, labels = np.array([0.1, -0.5, 0.3, 1.0], np.float32), np.array([0, 1, 2, 1])
  out = fns["apply"](params, x, c_noise, labels)
  x[1:] = 100.0 * rng.standard_normal((BATCH - 1,) + SHAPE)
  c_noise[1:], labels[1:] = 2.0, 0
  changed = fns["apply"](params, x, c_noise, labels)
  np.testing.assert_allclose(changed[0], out[0], rtol=1e-5, atol=1e-6)
  assert np.std(out[0]) > 1e-2  # example 0's output is not trivially constant


def test_attention_is_per_example():
  # The tiny UNet has no attention (compile time); the module is checked alone.
  attention = unet.Attention(8)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((3, 4, 4, 8)).astype(np.float32)
  params = _random_params(lambda k: attention.init(k, x), 1)
  apply = jax.jit(attention.apply)
  out = apply(params, x)
  x[1:] = 10.0 * rng.standard_normal((2, 4, 4, 8))
  np.testing.assert_allclose(apply(params, x)[0], out[0], rtol=1e-5, atol=1e-6)


# Each size at one of the two shapes (tracing costs ~1 s a model); the counts differ
# between the shapes only in the first and last convs.
@pytest.mark.parametrize("size,low,high,shape", [
    ("tiny", 0, 30_000, (28, 28, 1)), ("small", 150_000, 300_000, (32, 32, 3)),
    ("reference", 1_300_000, 1_700_000, (28, 28, 1)), ("fast", 600_000, 900_000, (28, 28, 1)),
    ("gpu", 10_000_000, 20_000_000, (32, 32, 3))])
def test_sizes_and_output_shapes(size, low, high, shape):
  model = unet.UNet(unet.unet_config(size, shape, 10))
  out, variables = jax.eval_shape(
      lambda k: model.init_with_output(k, jnp.zeros((3,) + shape), jnp.zeros((3,)),
                                       jnp.zeros((3,), jnp.int32)), jax.random.key(0))
  assert out.shape == (3,) + shape and out.dtype == jnp.float32
  assert low < unet.count_params(variables["params"]) < high


def test_resolution_must_halve_evenly():
  model = unet.UNet(unet.unet_config("small", (29, 29, 1), 10))
  with pytest.raises(ValueError, match="divisible by 2"):
    jax.eval_shape(lambda k: unet.init_params(model, k), jax.random.key(0))


def test_patches_fold_and_unfold_exactly():
  x = np.arange(2 * 4 * 6 * 3, dtype=np.float32).reshape(2, 4, 6, 3)
  folded = unet.space_to_depth(x, 2)
  assert folded.shape == (2, 2, 3, 12)
  # One folded pixel is its 2x2 block, row by row, channels innermost.
  np.testing.assert_array_equal(folded[1, 1, 2], x[1, 2:4, 4:6].reshape(-1))
  np.testing.assert_array_equal(unet.depth_to_space(folded, 2), x)


def test_patched_unet_needs_sides_divisible_by_patch_and_levels():
  model = unet.UNet(unet.unet_config("fast", (30, 30, 1), 10))
  with pytest.raises(ValueError, match="divisible by 4"):
    jax.eval_shape(lambda k: unet.init_params(model, k), jax.random.key(0))


@jax.jit
def _split_and_drop(key, label, label_dropout):
  """An example's label after dropout and its draw keys, as per_example_loss gets them."""
  label_key, _, draw_keys = edm.split_example_key(key, MULTIPLICITY)
  return edm.drop_labels(label_key, label, label_dropout, NUM_CLASSES), draw_keys


def test_vmapped_loss_is_each_example_alone_averaged_over_its_draws(tiny, fns):
  _, params, _ = tiny
  images, labels = _images(4), np.array([0, 1, 1, 0])
  keys = jax.random.split(jax.random.key(5), BATCH)
  batched = fns["losses"](params, images, labels, keys, 0.5)
  x = images.astype(np.float32) / 127.5 - 1.0
  for i in range(BATCH):
    label, draw_keys = _split_and_drop(keys[i], labels[i], 0.5)
    draws = [fns["draw"](params, x[i], label, k) for k in draw_keys]  # one draw at a time
    np.testing.assert_allclose(batched[i], np.mean(draws), rtol=1e-5)
    assert draws[0] != draws[1]  # each draw has its own sigma and noise
  assert len(set(np.asarray(batched).tolist())) == BATCH


def test_label_dropout_mask_and_rate(tiny, fns):
  key, labels, p = jax.random.key(9), np.arange(20_000) % NUM_CLASSES, 0.1
  dropped = edm.drop_labels(key, labels, p, NUM_CLASSES)
  mask = jax.random.bernoulli(key, p, labels.shape)
  np.testing.assert_array_equal(dropped, np.where(mask, NUM_CLASSES, labels))
  # Binomial(20000, 0.1) has std 42: 5 std is a bound, not a tuned threshold.
  assert abs(int(np.sum(dropped == NUM_CLASSES)) - p * 20_000) < 5 * math.sqrt(20_000 * p * (1 - p))
  # In the loss, p = 1 conditions every draw on the null class.
  _, params, _ = tiny
  images, keys = _images(10), jax.random.split(jax.random.key(11), BATCH)
  np.testing.assert_allclose(
      fns["losses"](params, images, np.array([0, 1, 0, 1]), keys, 1.0),
      fns["losses"](params, images, np.full(BATCH, NUM_CLASSES), keys, 0.0), rtol=1e-6)
  with pytest.raises(ValueError, match="num_classes"):
    edm.per_example_loss(params, None, images[0], 1, key, multiplicity=1, label_dropout=0.1)


def test_loss_refuses_float_images(tiny):
  _, params, apply_fn = tiny
  with pytest.raises(TypeError, match="uint8"):
    edm.per_example_loss(params, apply_fn, jnp.zeros(SHAPE), jnp.array(0), jax.random.key(0),
                         multiplicity=1)


def _gaussian_apply(params, x_in, c_noise, labels, dropout_key=None):
  """The raw network whose denoiser is exact for data N(means[y], std^2) per pixel:
  D(x; sigma, y) = means[y] + (x - means[y]) std^2 / (std^2 + sigma^2)."""
  sigma = jnp.exp(4.0 * c_noise)
  c_skip, c_out, c_in, _ = edm.preconditioning(sigma)
  expand = lambda c: c[:, None, None, None]
  x, mean, var = x_in / expand(c_in), expand(params["means"][labels]), params["std"] ** 2
  d = mean + (x - mean) * var / (var + expand(sigma) ** 2)
  return (d - expand(c_skip) * x) / expand(c_out)


def test_heun_sampler_matches_algorithm_1_with_guidance():
  # The sampler sees the network only through `denoise`, which the loss tests run
  # on the UNet; here an exact denoiser makes the result checkable. Guided, two
  # Gaussians of one std make a Gaussian denoiser again, of mean
  # (1 + w) * means[y] - w * means[null] (a swapped cond/uncond would move it). A
  # reference Heun in float64 (EDM Algorithm 1, no churn) from the same starting
  # noise must agree; on this linear ODE Euler would be ~15% off at 18 steps.
  params = {"means": jnp.array([-0.2, 0.3, 0.1]), "std": jnp.array(0.5)}  # 2: the null class
  labels, key, shape, w = np.array([0, 1, 1]), jax.random.key(0), (4, 4, 1), 1.5
  images = edm.sample(_gaussian_apply, params, key, labels, image_shape=shape,
                      guidance_scale=w, null_label=2)
  assert images.dtype == jnp.uint8 and images.shape == (3,) + shape
  t = edm.sigma_steps(18, 0.002, 80.0, 7.0).astype(np.float64)
  mean = ((1 + w) * np.array([-0.2, 0.3, 0.3]) - w * 0.1)[:, None, None, None]
  denoise = lambda x, sigma: mean + (x - mean) * 0.25 / (0.25 + sigma ** 2)
  x = np.asarray(jax.random.normal(key, (3,) + shape), np.float64) * t[0]
  for t_cur, t_next in zip(t[:-1], t[1:]):
    d = (x - denoise(x, t_cur)) / t_cur
    x_next = x + (t_next - t_cur) * d
    if t_next > 0:
      x_next = x + (t_next - t_cur) * 0.5 * (d + (x_next - denoise(x_next, t_next)) / t_next)
    x = x_next
  expected = np.round(np.clip((x + 1) * 127.5, 0, 255))
  assert np.max(np.abs(images - expected)) <= 1  # float32 against float64
  run = lambda key: edm.sample(_gaussian_apply, params, key, labels, image_shape=shape,
                               guidance_scale=w, null_label=2)
  np.testing.assert_array_equal(run(key), images)  # deterministic for a key
  assert np.any(np.asarray(run(jax.random.key(1))) != np.asarray(images))
  with pytest.raises(ValueError, match="null_label"):
    edm.sample(_gaussian_apply, params, key, labels, image_shape=shape, guidance_scale=w)


def test_sigma_steps_follow_edm():
  t = edm.sigma_steps(18, 0.002, 80.0, 7.0)
  assert len(t) == 19 and t[-1] == 0
  np.testing.assert_allclose([t[0], t[-2]], [80.0, 0.002], rtol=1e-6)
  assert np.all(np.diff(t) < 0)


def test_ema_update():
  ema = ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, 4.0])}, 0.75)
  np.testing.assert_allclose(ema["w"], [1.5, 2.5])
  # Warm-up: the first update keeps a tenth, later ones follow the ramp up to the decay.
  assert ema_decay_at(0, 0.999) == 0.1 and ema_decay_at(90, 0.999) == 91 / 100
  assert ema_decay_at(10**6, 0.999) == 0.999


def test_non_private_training_reduces_the_loss(tiny, fns):
  _, params, apply_fn = tiny
  # Two classes of constant images: dark for class 0, bright for class 1.
  labels = np.arange(BATCH) % NUM_CLASSES
  images = np.broadcast_to(np.where(labels == 0, 48, 208).astype(np.uint8)[:, None, None, None],
                           (BATCH,) + SHAPE)
  optimizer = optax.adam(1e-2)
  step = make_train_step(apply_fn, optimizer, multiplicity=MULTIPLICITY, num_classes=NUM_CLASSES,
                         label_dropout=0.5)

  def evaluate(p):  # the mean over many keys of the shared batch loss, labels kept
    return np.mean([fns["losses"](p, images, labels, jax.random.split(jax.random.key(j), BATCH),
                                  0.0) for j in range(10)])
  before = evaluate(params)
  state = (params, jax.jit(optimizer.init)(params), params)
  for i in range(50):
    key = jax.random.key(100 + i)  # (unstacking a split of 50 keys compiles for ~1 s)
    *state, loss = step(*state, images, labels, key, 0.9)
    if i == 0:  # the step's loss is the batch mean of per_example_loss, one key each
      np.testing.assert_allclose(loss, np.mean(fns["losses"](
          params, images, labels, jax.random.split(key, BATCH), 0.5)), rtol=1e-5)
  after, after_ema = evaluate(state[0]), evaluate(state[2])
  assert after < 0.5 * before and after_ema < 0.5 * before, (before, after, after_ema)
