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
