"""vpntk_jax/training/losses.py: the embedding objectives."""

import jax
import jax.numpy as jnp
import pytest

from vpntk_jax.training.losses import embedding_loss


def test_embedding_losses():
  t = {"a": jnp.array([1.0, 0.0]), "b": jnp.array([[0.0]])}
  s = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([[0.0]])}
  assert float(embedding_loss("mmd")(t, s)) == pytest.approx(5.0)
  assert float(embedding_loss("cosine")(t, s)) == pytest.approx(1.0)  # orthogonal
  assert float(embedding_loss("cosine")(t, t)) == pytest.approx(0.0, abs=1e-6)
  both = embedding_loss("mmd+cosine", cosine_weight=0.5)(t, s)
  assert float(both) == pytest.approx(5.0 + 0.5)
  # Scaling the synthetic embedding leaves the cosine term unchanged.
  scaled = jax.tree.map(lambda x: 3 * x, s)
  assert float(embedding_loss("cosine")(t, scaled)) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="loss must be"):
    embedding_loss("l1")


@pytest.mark.parametrize("kind", ["mmd", "cosine", "mmd+cosine"])
def test_of_products_is_the_loss(kind):
  t = {"a": jnp.array([1.0, -0.5]), "b": jnp.array([[0.25]])}
  s = {"a": jnp.array([0.3, 2.0]), "b": jnp.array([[-1.0]])}
  dot = lambda u, v: sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(u), jax.tree.leaves(v)))
  loss = embedding_loss(kind, cosine_weight=0.7)
  assert float(loss.of_products(dot(t, t), dot(t, s), dot(s, s))) == pytest.approx(
      float(loss(t, s)), rel=1e-6)
