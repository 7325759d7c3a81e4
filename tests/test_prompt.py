"""vpntk_jax/models/prompt.py: prompts, label maps, the pad mask, low-resolution
prompts, and the frozen or fine-tuned public generator."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from public_fixtures import TINY_NTK

from vpntk_jax import training
from vpntk_jax.blocks import PromptConfig
from vpntk_jax.errors import ConfigError
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.models.prompt import (PromptedGenerator, bounded_image_prompt, fixed_label_map,
                                     prompt_mask)


def test_zero_prompts_reproduce_the_public_generator(public_generator):
  g, v = public_generator
  sampler = PromptedGenerator(g, v, PromptConfig(label_map="learned"), 10, (28, 28, 1))
  params, state = sampler.init(jax.random.key(0), 5)
  assert set(params) == {"latent", "image", "label_logits"}
  z, labels = jax.random.normal(jax.random.key(1), (6, 5)), jnp.arange(6)
  prompted, _ = sampler.apply(params, state, z, labels, train=True)
  plain = g.apply(v, z, labels, train=False)
  # The learned map starts near (not at) one-hot: softmax(7 * onehot) ~ 0.99.
  np.testing.assert_allclose(prompted, plain, atol=0.05)
  exact = PromptedGenerator(g, v, PromptConfig(), 10, (28, 28, 1))
  p2, s2 = exact.init(jax.random.key(0), 5)
  np.testing.assert_allclose(exact.apply(p2, s2, z, labels, train=True)[0], plain, atol=1e-6)


def test_label_map_and_shape_errors(public_generator):
  g, v = public_generator
  np.testing.assert_array_equal(fixed_label_map("2,0,1", 3, 10), [2, 0, 1])
  with pytest.raises(ConfigError, match=r"classes \[12\]"):
    fixed_label_map("0,12", 2, 10)
  with pytest.raises(ConfigError, match="lists 2 classes"):
    fixed_label_map("0,1", 3, 10)
  with pytest.raises(ConfigError, match="only 10"):
    fixed_label_map("identity", 12, 10)
  with pytest.raises(ConfigError, match="comma-separated"):
    fixed_label_map("shirts", 2, 10)
  with pytest.raises(ConfigError, match=r"makes \(28, 28, 1\)"):
    PromptedGenerator(g, v, PromptConfig(), 10, (32, 32, 1))
  with pytest.raises(ConfigError, match="nothing to train"):
    PromptConfig(latent_noise=False, image_prompt="none").validate()


def test_pad_mask_is_a_border():
  mask = prompt_mask((28, 28, 1), "pad", 4)
  assert mask[:4].all() and mask[-4:].all() and mask[:, :4].all() and not mask[4:24, 4:24].any()
  assert prompt_mask((28, 28, 1), "full", None).all()
  with pytest.raises(ConfigError, match="no centre"):
    prompt_mask((28, 28, 1), "pad", 14)


def test_low_resolution_prompt_is_smooth_bounded_and_trains(public_generator):
  # Coarse rows alternating at full strength: upsampled, they stay within
  # [-1, 1] and change by about 2/4 per pixel instead of jumping by 2.
  weights = jnp.full((1, 7, 7, 1), 50.0).at[:, ::2].set(-50.0)
  prompt = np.asarray(bounded_image_prompt(weights, (28, 28, 1)))
  assert prompt.shape == (1, 28, 28, 1) and np.abs(prompt).max() <= 1.0
  assert np.abs(prompt).max() > 0.9
  assert np.abs(np.diff(prompt, axis=1)).max() <= 0.5 + 1e-5
  np.testing.assert_array_equal(bounded_image_prompt(weights, (7, 7, 1)), jnp.tanh(weights))
  g, v = public_generator
  sampler = PromptedGenerator(g, v, PromptConfig(prompt_resolution=7), 10, (28, 28, 1))
  assert sampler.init(jax.random.key(0), 5)[0]["image"].shape == (10, 7, 7, 1)
  state, losses = _train_steps(sampler)
  assert state.params["image"].shape == (10, 7, 7, 1) and losses[-1] < losses[0]
  with pytest.raises(ConfigError, match="larger than the 28x28"):
    PromptedGenerator(g, v, PromptConfig(prompt_resolution=29), 10, (28, 28, 1))
  with pytest.raises(ConfigError, match="prompt_resolution must be >= 1"):
    PromptConfig(prompt_resolution=0).validate()


def _train_steps(sampler, steps=3):
  network = ntk.NTKNetwork(TINY_NTK)
  params = ntk.init_params(jax.random.key(0), network, 784)
  embed = lambda x: ntk.synthetic_embedding(network, params, x)
  target = embed(jax.random.uniform(jax.random.key(2), (10, 4, 784)))
  optimizer = sampler.optimizer(optax.adam(1e-2))
  state = training.init_state(jax.random.key(1), sampler, optimizer, 5)
  objective = training.matching_objective(NTKFeatureMap(network, input_dim=784, seed=0),
                                          training.embedding_loss("mmd+cosine"))
  step = training.make_train_step(sampler, objective, target, optimizer, num_classes=10,
                                  per_class=4, latent_dim=5, base_key=jax.random.key(3))
  losses = []
  for _ in range(steps):
    state, loss = step(state)
    losses.append(float(loss))
  return state, losses


def test_prompt_training_keeps_the_public_generator_frozen(public_generator):
  g, v = public_generator
  state, losses = _train_steps(PromptedGenerator(g, v, PromptConfig(), 10, (28, 28, 1)))
  assert losses[-1] < losses[0]
  assert float(jnp.abs(state.params["image"]).max()) > 0
  frozen = state.model_state["generator"]
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(v)):
    np.testing.assert_array_equal(a, b)


def test_finetuning_moves_the_generator(public_generator):
  g, v = public_generator
  config = PromptConfig(finetune_generator=True, generator_learning_rate=1e-3)
  state, _ = _train_steps(PromptedGenerator(g, v, config, 10, (28, 28, 1)))
  moved = [float(jnp.abs(a - b).max()) for a, b in
           zip(jax.tree.leaves(state.params["generator"]), jax.tree.leaves(v["params"]))]
  assert max(moved) > 0
