"""Generator layers and the training loop."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpntk_jax import training
from vpntk_jax.config import RunConfig
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.models.generator import ConvCondGenerator, UpsampleConv
from vpntk_jax.pipeline import build_recipe


@pytest.mark.parametrize("shape", [(7, 7, 4), (8, 6, 3)])
def test_dense_upsample_conv_equals_xla_convolution(shape):
  x = jax.random.normal(jax.random.key(0), (3,) + shape)
  dense, conv = UpsampleConv(5), UpsampleConv(5, force_conv=True)
  variables = dense.init(jax.random.key(1), x)
  variables = jax.tree.map(lambda v: v + 0.1, variables)  # nonzero bias too
  # Jitted, as the generator runs in training: one compile each, not one per op.
  np.testing.assert_allclose(jax.jit(dense.apply)(variables, x), jax.jit(conv.apply)(variables, x),
                             atol=1e-5)
  loss = lambda layer: (lambda v, x: jnp.sum(jnp.sin(layer.apply(v, x))))
  g_dense = jax.jit(jax.grad(loss(dense), argnums=(0, 1)))(variables, x)
  g_conv = jax.jit(jax.grad(loss(conv), argnums=(0, 1)))(variables, x)
  for a, b in zip(jax.tree.leaves(g_dense), jax.tree.leaves(g_conv)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_generator_output_shape_and_range():
  gen = ConvCondGenerator(num_classes=3, image_shape=(12, 8, 3))
  z, labels = jnp.ones((4, 5)), jnp.array([0, 1, 2, 0])
  variables = gen.init(jax.random.key(0), z, labels, train=False)
  out = gen.apply(variables, z, labels, train=False)
  assert out.shape == (4, 12, 8, 3)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  with pytest.raises(ValueError, match="multiple of 4"):
    ConvCondGenerator(num_classes=3, image_shape=(10, 10, 1)).init(
        jax.random.key(0), z, labels, train=False)


def test_training_reduces_the_embedding_distance():
  """A few Adam steps move the synthetic embedding towards a real one."""
  rng = np.random.default_rng(0)
  network = ntk.NTKNetwork((32, "relu", "layernorm", 4))
  params = ntk.init_params(jax.random.key(0), network, 12 * 12)
  # target: embedding of bright-top vs bright-bottom images, one class each
  images = np.zeros((40, 12, 12, 1), np.uint8)
  images[:20, :6] = 255
  images[20:, 6:] = 255
  images = np.clip(images + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
  labels = np.repeat([0, 1], 20)
  target = jax.tree.map(lambda a: a / 40, ntk.private_embedding_sum(network, params, images,
                                                                     labels, 2))
  config = training.TrainConfig(steps=60, batch_size=20, learning_rate=1e-2)
  gen = ConvCondGenerator(num_classes=2, image_shape=(12, 12, 1), hidden=32, channels=8)
  optimizer = training.make_optimizer(config)
  state = training.init_state(jax.random.key(1), gen, optimizer, config.latent_dim)
  objective = training.matching_objective(NTKFeatureMap(network, input_dim=12 * 12, seed=0))
  step = training.make_train_step(gen, objective, target, optimizer, num_classes=2, per_class=10,
                                  latent_dim=config.latent_dim, base_key=jax.random.key(2))
  losses = []
  for _ in range(config.steps):
    state, loss = step(state)
    losses.append(float(loss))
  assert int(state.step) == 60
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses[::10]


def test_run_config_sets_the_generator_width():
  train = training.TrainConfig(latent_dim=7, generator_hidden=24, generator_channels=12)
  config = RunConfig(train=train)
  sampler = build_recipe(config, (28, 28, 1), num_classes=3).sampler
  params, _ = sampler.init(jax.random.key(0), train.latent_dim)
  kernels = sorted(p.shape for p in jax.tree.leaves(params) if p.ndim == 2)
  # first dense: [z, onehot] -> hidden; second: hidden -> 7*7*channels
  assert (7 + 3, 24) in kernels and (24, 7 * 7 * 12) in kernels


def test_train_config_rejects_bad_values():
  with pytest.raises(ValueError):
    training.TrainConfig(generator_hidden=0)
  with pytest.raises(ValueError):
    training.TrainConfig(batch_size=0)
  with pytest.raises(ValueError):
    training.TrainConfig(schedule="warmup")


def test_synthesis_batches_hold_a_fixed_pixel_budget():
  assert training.generation_batch_size((28, 28, 1)) == 5000
  assert training.generation_batch_size((128, 128, 3)) == 5000 * 784 // (128 * 128 * 3)
  assert training.generation_batch_size((4096, 4096, 3)) == 1
  gen = ConvCondGenerator(num_classes=3, image_shape=(12, 8, 3))
  variables = gen.init(jax.random.key(0), jnp.ones((1, 5)), jnp.zeros((1,), jnp.int32),
                       train=False)
  state = training.TrainState(step=0, params=variables["params"],
                              model_state=variables["batch_stats"], opt_state=None)
  labels = np.arange(7) % 3
  key = jax.random.key(1)
  default = training.generate(gen, state, key, labels, latent_dim=5)
  explicit = training.generate(gen, state, key, labels, latent_dim=5,
                               batch_size=training.generation_batch_size((12, 8, 3)))
  assert default.shape == (7, 12, 8, 3) and default.dtype == np.uint8
  np.testing.assert_array_equal(default, explicit)
