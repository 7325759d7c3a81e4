"""NTK features: exact == neural-tangents, fast == exact, norms bounded for any input."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vpntk_jax._nt_compat  # noqa: F401  (before neural_tangents)
import neural_tangents as nt
from vpntk_jax.features import ntk

NETWORKS = [
    ntk.NTKNetwork((64, "relu", "layernorm", 10)),  # the DP-NTK shape, narrower
    ntk.NTKNetwork((32, "tanh", 16, "relu", "layernorm", 3), init="lecun"),
]


# Jitted, as the features run in training: one compile per shape, not one per op.
_features = jax.jit(ntk.per_example_features, static_argnums=0)


def _data(n=24, d=20, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, size=(n, 4, 5, 1), dtype=np.uint8)  # d = 20
  y = np.arange(n) % classes
  return x, y


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("implementation", [1, 2])
def test_feature_gram_is_neural_tangents_empirical_ntk(network, implementation):
  x, _ = _data(n=10)
  xf = ntk.flatten_images(x)
  params = ntk.init_params(jax.random.key(0), network, xf.shape[1])
  # Both sides jitted: one compile each, not one per op.
  phi = _features(network, params, xf)
  gram = np.asarray(phi @ phi.T)
  f = lambda p, inputs: ntk.summed_output(network, p, inputs)[:, None]
  kernel_fn = nt.empirical_ntk_fn(f, trace_axes=(), implementation=implementation)
  kernel = jax.jit(kernel_fn)(xf, None, params)
  np.testing.assert_allclose(np.asarray(kernel).reshape(10, 10), gram, rtol=1e-4,
                             atol=1e-4 * np.abs(gram).max())


@pytest.mark.parametrize("network", NETWORKS)
def test_fast_private_embedding_matches_exact(network):
  x, y = _data(n=37)
  params = ntk.init_params(jax.random.key(1), network, 20)
  exact = ntk.exact_labelled_embedding(network, params, np.asarray(ntk.flatten_images(x)), y, 3)
  # chunk 8 forces padding and several chunks per class
  fast = ntk.private_embedding_sum(network, params, x, y, 3, chunk_size=8)
  # Chunk sums read at once give the same numbers as sums queued on the device.
  at_once = ntk.private_embedding_sum(network, params, x, y, 3, chunk_size=8, pending_bytes=0)
  for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(at_once)):
    np.testing.assert_array_equal(a, b)
  fast = np.asarray(ntk.embedding_to_matrix(fast), np.float64) / len(y)
  fast *= 1 + ntk.NORM_SAFETY_MARGIN  # exact uses the bare float64 norm
  np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6 * np.abs(exact).max())


@pytest.mark.parametrize("network", NETWORKS)
def test_fast_synthetic_embedding_and_its_gradient_match_exact(network):
  classes, per_class, d = 3, 5, 20
  x = jax.random.uniform(jax.random.key(2), (classes, per_class, d))
  params = ntk.init_params(jax.random.key(3), network, d)
  target = jax.random.normal(jax.random.key(4), (ntk.num_params(params), classes)) * 1e-2

  def exact_mean(xg):
    phi = ntk.per_example_features(network, params, xg.reshape(-1, d))
    phi = phi / jnp.linalg.norm(phi, axis=1, keepdims=True)
    onehot = jax.nn.one_hot(jnp.repeat(jnp.arange(classes), per_class), classes)
    return phi.T @ onehot / (classes * per_class)

  def fast_mean(xg):
    m = ntk.embedding_to_matrix(ntk.synthetic_embedding(network, params, xg))
    return m * (1 + ntk.NORM_SAFETY_MARGIN)

  # Jitted: one compile each, not one per op.
  np.testing.assert_allclose(jax.jit(fast_mean)(x), jax.jit(exact_mean)(x), atol=1e-6)
  loss = lambda mean_fn: (lambda xg: jnp.sum(jnp.square(mean_fn(xg) - target)))
  g_fast = jax.jit(jax.grad(loss(fast_mean)))(x)
  g_exact = jax.jit(jax.grad(loss(exact_mean)))(x)
  np.testing.assert_allclose(g_fast, g_exact, rtol=1e-3, atol=1e-5 * float(jnp.abs(g_exact).max()))


ADVERSARIAL = {
    "zeros": np.zeros((4, 28, 28, 1)),
    "ones": np.ones((4, 28, 28, 1)),
    "huge": np.full((4, 28, 28, 1), 1e6),
    "tiny": np.full((4, 28, 28, 1), 1e-30),
    "alternating": np.indices((4, 28, 28, 1)).sum(0) % 2 * 1e3,
    "duplicated": np.repeat(np.random.default_rng(0).uniform(size=(1, 28, 28, 1)), 4, 0),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_normalised_contribution_norm_at_most_one_in_float64(name):
  """The float32 scale applied to the float64-exact feature never exceeds norm 1."""
  network = ntk.NTKNetwork((800, "relu", "layernorm", 10))
  params = ntk.init_params(jax.random.key(0), network, 784)
  x = ADVERSARIAL[name].reshape(4, -1).astype(np.float32)
  _, _, scales = ntk.normalised_feature_scales(network, params, jnp.asarray(x))
  scales = np.asarray(scales, np.float64)
  assert np.all(np.isfinite(scales))
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    phi64 = np.asarray(_features(network, p64, jnp.asarray(x, jnp.float64)))
  norms = np.linalg.norm(phi64, axis=1) * scales
  assert np.all(norms <= 1.0), norms
  assert np.all(norms > 1.0 - 2 * ntk.NORM_SAFETY_MARGIN), norms  # not over-shrunk


def test_zero_feature_contributes_zero_not_nan():
  scales = ntk.normalising_scale(jnp.array([0.0, 1e-40, 4.0, jnp.inf]))
  assert np.asarray(scales)[:2].tolist() == [0.0, 0.0]
  assert np.isclose(float(scales[2]), 0.5 / (1 + ntk.NORM_SAFETY_MARGIN))
  assert float(scales[3]) == 0.0


def test_embedding_matrix_round_trip():
  params = ntk.init_params(jax.random.key(0), NETWORKS[1], 7)
  emb = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape + (3,)), params)
  back = ntk.matrix_to_embedding(ntk.embedding_to_matrix(emb), emb)
  for a, b in zip(jax.tree.leaves(emb), jax.tree.leaves(back)):
    np.testing.assert_array_equal(a, b)


def test_network_spec_errors():
  with pytest.raises(ValueError, match="unknown layer"):
    ntk.NTKNetwork((10, "swishy", 2))
  with pytest.raises(ValueError, match="Dense"):
    ntk.NTKNetwork(("relu",))


def test_compat_makes_neural_tangents_import_without_tensorflow():
  code = ("import sys, vpntk_jax._nt_compat, neural_tangents as nt; "
          "assert 'tensorflow' not in sys.modules; "
          "import jax.util; assert jax.util.safe_map; print(nt.empirical_ntk_fn.__name__)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr
  assert "empirical_ntk_fn" in out.stdout


# --- vpntk check-features --------------------------------------------------------

_TINY_CONFIG = str(Path(__file__).parent / "tiny_config.py")


def _check(capsys, *args):
  from vpntk_jax import cli
  code = cli.main(["check-features", _TINY_CONFIG, "--examples", "12", *args])
  out = capsys.readouterr().out
  return code, (json.loads(out) if out.strip() else None)


def test_check_features_reports_agreement_with_neural_tangents(capsys):
  code, result = _check(capsys)
  assert code == 0 and result["ok"]
  assert result["network"]["layers"] == [64, "relu", "layernorm", 10]
  assert result["images"].startswith("12 of ")
  assert set(result["relative_errors"]) == {
      "gram_vs_neural_tangents_ntk", "fast_norms_vs_neural_tangents_diagonal",
      "fast_mean_embedding_vs_explicit_features"}
  assert max(result["relative_errors"].values()) <= 1e-4


def test_check_features_fails_on_a_wrong_fast_path(capsys, monkeypatch):
  real = ntk.sq_feature_norms
  monkeypatch.setattr(ntk, "sq_feature_norms", lambda a, d: real(a, d) * 1.01)
  code, result = _check(capsys)
  assert code == 1 and not result["ok"]
  assert result["relative_errors"]["fast_norms_vs_neural_tangents_diagonal"] > 5e-3


def test_check_features_without_neural_tangents_names_the_extra(capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "neural_tangents", None)  # import raises ImportError
  from vpntk_jax import cli
  assert cli.main(["check-features", _TINY_CONFIG, "--examples", "12"]) == 2
  assert "vpntk_jax[ntk]" in capsys.readouterr().err


@pytest.mark.parametrize("network", NETWORKS)
@pytest.mark.parametrize("kind", ["mmd", "mmd+cosine"])
@pytest.mark.parametrize("target_offset", [1.0, 1e-2])
def test_objective_through_products_matches_the_materialised_embedding(network, kind,
                                                                       target_offset):
  # The step's loss from <t, s> and <s, s> (never forming s) against the loss of
  # the formed embedding: value and gradient in the generator's images. The
  # target is a release-like embedding: another batch's, plus an offset that is
  # large (early training) or small relative to it (close to a fit).
  from vpntk_jax.features import NTKFeatureMap
  from vpntk_jax.training import embedding_loss, matching_objective
  import types
  classes, per_class, d = 3, 6, 20
  features = NTKFeatureMap(network, input_dim=d, seed=3)
  x = jax.random.uniform(jax.random.key(2), (classes, per_class, d))
  other = ntk.synthetic_embedding(network, features.params,
                                  jax.random.uniform(jax.random.key(5), x.shape))
  noise = jax.tree.map(lambda l: jax.random.normal(jax.random.key(6), l.shape), other)
  scale = target_offset * float(jnp.sqrt(sum(jnp.vdot(l, l) for l in jax.tree.leaves(other))))
  scale /= float(jnp.sqrt(sum(jnp.vdot(l, l) for l in jax.tree.leaves(noise))))
  target = jax.tree.map(lambda t, n: t + scale * n, other, noise)
  loss = embedding_loss(kind, cosine_weight=0.5)
  results = []
  for fmap in (features, types.SimpleNamespace(synthetic_mean=features.synthetic_mean)):
    objective = matching_objective(fmap, loss)
    results.append(jax.jit(jax.value_and_grad(objective.loss, argnums=1))(
        objective.prepare(target), x))
  (value, grad), (value_ref, grad_ref) = results
  assert float(value) == pytest.approx(float(value_ref), rel=1e-4)
  np.testing.assert_allclose(grad, grad_ref, rtol=0, atol=1e-4 * float(jnp.abs(grad_ref).max()))
