"""vpntk_jax/models: the conditional generator and the extractor at each resolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpntk_jax.models.extractor import ConvExtractor, default_stages
from vpntk_jax.models.generator import ConvCondGenerator, default_upsamples


@pytest.mark.parametrize("size,stages", [(28, 2), (32, 2), (64, 3), (128, 4)])
def test_architectures_scale_with_resolution(size, stages):
  assert default_upsamples(size) == stages
  assert default_stages(size) == stages
  g = ConvCondGenerator(10, (size, size, 1))
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  assert g.apply(v, jnp.zeros((2, 5)), jnp.array([0, 1]), train=False).shape == (2, size, size, 1)
  e = ConvExtractor(10)
  p = e.init(jax.random.key(0), jnp.zeros((2, size, size, 1)))
  f = e.apply(p, jnp.zeros((2, size, size, 1)), features="pooled")
  assert f.shape == (2, e.feature_dim(size))


def test_generator_soft_labels_equal_hard_labels_for_one_hot():
  g = ConvCondGenerator(10)
  v = g.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), train=False)
  z, labels = jax.random.normal(jax.random.key(1), (4, 5)), jnp.array([0, 3, 9, 3])
  hard = g.apply(v, z, labels, train=False)
  soft = g.apply(v, z, jax.nn.one_hot(labels, 10), train=False)
  np.testing.assert_allclose(hard, soft, atol=1e-6)


@pytest.mark.parametrize("size", [1, 3])
def test_matmul_conv_matches_flax_conv(monkeypatch, size):
  """MatmulConv's CPU path (shifted copies, one matmul) and its elsewhere path give
  nn.Conv's result and per-example kernel gradients, from the same parameters."""
  from flax import linen as nn

  from vpntk_jax.models.layers import MatmulConv
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.standard_normal((3, 7, 5, 2)), jnp.float32)
  conv = nn.Conv(4, (size, size), padding="SAME")
  variables = conv.init(jax.random.key(0), x)
  variables = {"params": {"kernel": variables["params"]["kernel"],
                          "bias": jnp.asarray(rng.standard_normal(4), jnp.float32)}}
  ours = MatmulConv(4, (size, size))
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, variables)

  def per_example_grads(module):
    loss = lambda p, xi: jnp.sum(jnp.sin(module.apply({"params": p}, xi[None])))
    return jax.vmap(jax.grad(loss), in_axes=(None, 0))(variables["params"], x)

  with jax.default_matmul_precision("float32"):
    ref, ref_grads = np.asarray(conv.apply(variables, x)), per_example_grads(conv)
    results = [(np.asarray(ours.apply(variables, x)), per_example_grads(ours))]
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    results.append((np.asarray(ours.apply(variables, x)), per_example_grads(ours)))
  for out, grads in results:
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 grads, ref_grads)
  with pytest.raises(ValueError, match="1x1 or 3x3"):
    MatmulConv(4, (5, 5)).init(jax.random.key(0), x)


@pytest.mark.parametrize("chunk_examples", [1, 2, 3])
def test_chunked_conv_matches_whole_batch(chunk_examples):
  """conv3x3_same over chunks of examples (a remainder chunk included) gives the
  whole batch's result and the same input, kernel and bias gradients."""
  from vpntk_jax.models.layers import conv3x3_same
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((7, 6, 5, 3)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(4), jnp.float32)
  per_example = 9 * 6 * 5 * 3 * 4  # bytes of one example's shifted copies

  def loss(x, kernel, bias, chunk_bytes):
    return jnp.sum(jnp.sin(conv3x3_same(x, kernel, bias, chunk_bytes)))

  with jax.default_matmul_precision("float32"):
    whole = conv3x3_same(x, kernel, bias, None)
    chunked = conv3x3_same(x, kernel, bias, chunk_examples * per_example)
    ref_grads = jax.grad(loss, (0, 1, 2))(x, kernel, bias, None)
    grads = jax.grad(loss, (0, 1, 2))(x, kernel, bias, chunk_examples * per_example)
  assert chunked.shape == whole.shape == (7, 6, 5, 4)
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)
  for g, ref in zip(grads, ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)
