"""Tests for vpntk_jax.evaluation.fid (Frechet/kernel distances) and the FID InceptionV3
(vpntk_jax.models.inception)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.evaluation import fid
from vpntk_jax.models import inception as fid_inception


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh(matrix)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _closed_form(mu1, sigma1, mu2, sigma2) -> float:
  """FID via the symmetric form tr sqrt(S1^1/2 S2 S1^1/2): eigh only, no sqrtm."""
  root = _psd_sqrt(sigma1)
  cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sigma2 @ root), 0.0, None)).sum()
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)


def _random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
  a = rng.normal(size=(dim, dim))
  return a @ a.T / dim + 0.1 * np.eye(dim)


# ---------------------------------------------------------------- Frechet distance


def test_frechet_diagonal_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  value = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_non_diagonal_closed_form():
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  a, b = rng.uniform(0.2, 4.0, 6), rng.uniform(0.2, 4.0, 6)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  # Shared eigenvectors: sqrtm(S1 S2) = Q diag(sqrt(a b)) Q^T.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  value = fid.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  assert value == pytest.approx(expected, rel=1e-9)


def test_frechet_general_case_identity_and_symmetry():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = _random_covariance(rng, 8), _random_covariance(rng, 8)
  forward = fid.frechet_distance(mu1, s1, mu2, s2)
  assert forward == pytest.approx(_closed_form(mu1, s1, mu2, s2), rel=1e-9)
  assert fid.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(forward, rel=1e-9)
  assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-10 * np.trace(s1)


def test_frechet_rank_deficient_sample_covariances():
  """N < F (the usual 2048-d case with few samples): finite and ~0 against itself."""
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64))
  mu, sigma = fid.gaussian_statistics(x)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
  assert fid.fid_from_features(x, y) > 1.0


def test_frechet_collapsed_samples_have_no_complex_roots():
  """Rank-deficient, nearly collapsed features (as from a poor generator), where
  scipy's sqrtm of the non-symmetric product returns imaginary parts."""
  rng = np.random.default_rng(4)
  basis = rng.normal(size=(3, 288))
  x = rng.normal(size=(1000, 3)) @ basis + 1e-6 * rng.normal(size=(1000, 288))
  y = rng.normal(size=(1000, 288)) * rng.uniform(0, 3, 288)
  value = fid.fid_from_features(x, y)
  assert np.isfinite(value) and value > 0
  mu, sigma = fid.gaussian_statistics(x)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)


def test_frechet_rejects_non_covariance():
  with pytest.raises(DataError, match="not positive semi-definite"):
    fid.frechet_distance(np.zeros(2), np.diag([-1.0, 1.0]), np.zeros(2), np.eye(2))


@pytest.mark.parametrize(
  "args, message",
  [
    ((np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "differ in dimension"),
    ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "first Gaussian"),
    ((np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), r"mean must be \(d,\)"),
    ((np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2)), "NaN or infinite"),
  ],
)
def test_frechet_bad_inputs(args, message):
  with pytest.raises(DataError, match=message):
    fid.frechet_distance(*args)


def test_sample_estimate_approaches_closed_form():
  dim, n = 3, 20_000
  mu1, mu2 = np.zeros(dim), np.array([1.0, -0.5, 0.25])
  s1 = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
  s2 = np.array([[1.0, -0.4, 0.2], [-0.4, 1.5, 0.0], [0.2, 0.0, 0.8]])
  rng = np.random.default_rng(4)
  a, b = rng.multivariate_normal(mu1, s1, n), rng.multivariate_normal(mu2, s2, n)
  diff = mu1 - mu2
  # The error is dominated by ||mean_a - mean_b||^2, whose std is about
  # 2 sqrt(diff^T (S1 + S2) diff / n) (~0.027 here, 0.028 measured over 200 seeds);
  # covariance estimation adds O(tr(S) / n) bias and O(sqrt(d / n)) noise, both smaller.
  std = 2.0 * np.sqrt(diff @ (s1 + s2) @ diff / n)
  expected = _closed_form(mu1, s1, mu2, s2)
  assert fid.fid_from_features(a, b) == pytest.approx(expected, abs=5.0 * std)


# ---------------------------------------------------------------- statistics and KID


def test_gaussian_statistics_matches_numpy():
  x = np.random.default_rng(5).normal(size=(50, 4)).astype(np.float32)
  mu, sigma = fid.gaussian_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0))
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))
  assert fid.gaussian_statistics(x[:, :1])[1].shape == (1, 1)


@pytest.mark.parametrize(
  "features, message",
  [
    (np.zeros((1, 3)), "at least 2 rows"),
    (np.zeros(5), "2-D"),
    (np.array([[0.0, 1.0], [np.inf, 0.0]]), "NaN or infinite"),
  ],
)
def test_gaussian_statistics_bad_inputs(features, message):
  with pytest.raises(ValueError, match=message):
    fid.gaussian_statistics(features)


def test_polynomial_mmd_matches_pairwise_definition():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
  k = lambda u, v: (u @ v / 3 + 1.0) ** 3  # noqa: E731
  m = len(x)
  within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
  cross = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
  expected = within / (m * (m - 1)) - 2.0 * cross / m**2
  assert fid.polynomial_mmd2(x, y) == pytest.approx(expected, rel=1e-10)
  # subset_size is capped at 6, so each subset is the whole set in another order.
  mean, std = fid.kernel_inception_distance(x, y, num_subsets=3, subset_size=1000)
  assert mean == pytest.approx(expected, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_same_distribution_near_zero_shifted_positive():
  rng = np.random.default_rng(7)
  a, b = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
  shifted = rng.normal(size=(600, 8)) + 0.5
  same, same_std = fid.kernel_inception_distance(a, b, num_subsets=20, subset_size=200)
  far, _ = fid.kernel_inception_distance(a, shifted, num_subsets=20, subset_size=200)
  # Measured: same ~ -0.002 +- 0.019, shifted ~ 1.1.
  assert abs(same) < 0.05
  assert far > 0.5 and far > 10 * (abs(same) + same_std)
  assert fid.kernel_inception_distance(a, b, num_subsets=4, subset_size=100, seed=3) == (
    fid.kernel_inception_distance(a, b, num_subsets=4, subset_size=100, seed=3)
  )


def test_kid_bad_inputs():
  a = np.zeros((10, 3))
  with pytest.raises(DataError, match="differ in dimension"):
    fid.kernel_inception_distance(a, np.zeros((10, 4)))
  with pytest.raises(ConfigError, match="num_subsets"):
    fid.kernel_inception_distance(a, a, num_subsets=0)
  with pytest.raises(ConfigError, match="subset_size"):
    fid.kernel_inception_distance(a, a, subset_size=1)
  with pytest.raises(DataError, match="differ in dimension"):
    fid.fid_from_features(a, np.zeros((10, 4)))


# ---------------------------------------------------------------- batching and fid_kid


def _pixel_statistics(images: jax.Array) -> jax.Array:
  """A cheap feature extractor: per-image channel means and a brightness square."""
  x = images.astype(jnp.float32) / 255.0
  means = x.mean(axis=(1, 2))
  return jnp.concatenate([means, (means**2).sum(-1, keepdims=True)], axis=-1)


def test_features_in_batches_pads_and_compiles_once():
  traces = []

  @jax.jit
  def feature_fn(images):
    traces.append(images.shape)
    return _pixel_statistics(images)

  images = np.random.default_rng(8).integers(0, 256, (10, 5, 5, 2), dtype=np.uint8)
  features = fid.features_in_batches(feature_fn, images, batch_size=4)
  assert features.shape == (10, 3) and features.dtype == np.float64
  np.testing.assert_allclose(features, np.asarray(_pixel_statistics(images)), rtol=1e-6)
  assert traces == [(4, 5, 5, 2)]


def test_features_in_batches_bad_inputs():
  images = np.zeros((3, 4, 4, 1), np.uint8)
  with pytest.raises(DataError, match="uint8 NHWC"):
    fid.features_in_batches(_pixel_statistics, images.astype(np.float32))
  with pytest.raises(DataError, match="no images"):
    fid.features_in_batches(_pixel_statistics, images[:0])
  with pytest.raises(DataError, match=r"\(3, F\)"):
    fid.features_in_batches(lambda x: x.reshape(-1), images)
  with pytest.raises(ConfigError, match="batch_size"):
    fid.features_in_batches(_pixel_statistics, images, batch_size=0)


def test_fid_kid_generic_feature_space():
  rng = np.random.default_rng(9)
  dark = rng.integers(0, 128, (40, 6, 6, 3), dtype=np.uint8)
  other_dark = rng.integers(0, 128, (30, 6, 6, 3), dtype=np.uint8)
  bright = rng.integers(128, 256, (30, 6, 6, 3), dtype=np.uint8)
  same = fid.fid_kid(_pixel_statistics, dark, dark, batch_size=16, subset_size=20)
  assert same["fid"] == pytest.approx(0.0, abs=1e-9)
  assert (same["num_a"], same["num_b"], same["kid_subset_size"]) == (40, 40, 20)
  near = fid.fid_kid(_pixel_statistics, dark, other_dark, batch_size=16, subset_size=20)
  far = fid.fid_kid(_pixel_statistics, dark, bright, batch_size=16, subset_size=20)
  assert far["fid"] > 100 * near["fid"] > 0
  assert far["kid_mean"] > 10 * abs(near["kid_mean"])
  assert set(far) == {"fid", "kid_mean", "kid_std", "kid_subset_size", "num_a", "num_b"}


# ---------------------------------------------------------------- InceptionV3


@pytest.fixture(scope="module")
def inception():
  """Random variables and one feature function; its network compiles once for batch 2."""
  variables = fid_inception.init_inception_params(jax.random.key(0))
  return variables, fid_inception.inception_feature_fn(variables)


def _images(shape: tuple[int, ...], seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_expected_inception_shapes():
  shapes = fid_inception.expected_inception_shapes()
  kernels = [name for name in shapes if name.endswith("/kernel")]
  # 94 conv-BN units, 5 arrays each; 21,820,000 numbers, as pytorch-fid's model without fc.
  assert len(kernels) == 94 and len(shapes) == 470
  assert sum(int(np.prod(s)) for s in shapes.values()) == 21_820_000
  assert shapes["params/Conv2d_1a_3x3/conv/kernel"] == (3, 3, 3, 32)
  assert shapes["params/Mixed_6b/branch7x7_2/conv/kernel"] == (1, 7, 128, 128)
  assert shapes["params/Mixed_7c/branch_pool/conv/kernel"] == (1, 1, 2048, 192)
  assert shapes["batch_stats/Mixed_7c/branch3x3dbl_3b/bn/var"] == (384,)


def test_inception_features_shape_and_finite(inception):
  _, feature_fn = inception
  for shape in ((2, 28, 28, 1), (2, 32, 32, 3)):
    features = np.asarray(feature_fn(_images(shape, seed=10)))
    assert features.shape == (2, fid_inception.INCEPTION_DIM)
    assert np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])


def test_inception_grayscale_is_replicated_rgb(inception):
  _, feature_fn = inception
  gray = _images((2, 28, 28, 1), seed=11)
  np.testing.assert_allclose(
    np.asarray(feature_fn(gray)), np.asarray(feature_fn(np.repeat(gray, 3, axis=-1))), rtol=1e-6
  )


def test_inception_rejects_bad_images(inception):
  _, feature_fn = inception
  with pytest.raises(DataError, match="1 or 3 channels"):
    feature_fn(_images((2, 28, 28, 2), seed=12))
  with pytest.raises(DataError, match="uint8"):
    feature_fn(np.zeros((2, 28, 28, 3), np.float32))


def test_inception_npz_round_trip(inception, tmp_path):
  variables, feature_fn = inception
  path = tmp_path / "inception.npz"
  np.savez(path, **fid_inception.flatten_variables(jax.device_get(variables)))
  loaded_fn = fid_inception.inception_feature_fn(fid_inception.load_inception_params(path))
  images = _images((3, 32, 32, 3), seed=13)
  # batch_size 2 pads the last batch, reusing the fixture's compiled network.
  np.testing.assert_array_equal(
    fid.features_in_batches(loaded_fn, images, batch_size=2),
    fid.features_in_batches(feature_fn, images, batch_size=2),
  )


def test_inception_loader_names_bad_entries(inception, tmp_path):
  flat = fid_inception.flatten_variables(jax.device_get(inception[0]))
  missing = "batch_stats/Mixed_6c/branch7x7_3/bn/mean"
  reshaped = "params/Conv2d_2a_3x3/conv/kernel"
  broken = {name: value for name, value in flat.items() if name != missing}
  broken[reshaped] = np.zeros((3, 3, 32, 31), np.float32)
  broken["params/extra/kernel"] = np.zeros(2, np.float32)
  path = tmp_path / "broken.npz"
  np.savez(path, **broken)
  with pytest.raises(DataError) as error:
    fid_inception.load_inception_params(path)
  message = str(error.value)
  assert f"1 missing: {missing}" in message
  assert f"{reshaped}: expected (3, 3, 32, 32), got (3, 3, 32, 31)" in message
  assert "1 unexpected: params/extra/kernel" in message
  with pytest.raises(DataError, match="cannot read"):
    fid_inception.load_inception_params(tmp_path / "absent.npz")


def _torch_name(flax_name: str) -> str:
  """'batch_stats/Mixed_5b/branch1x1/bn/mean' -> 'Mixed_5b.branch1x1.bn.running_mean'."""
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                "var": "running_var"}
  _, *path, leaf = flax_name.split("/")
  return ".".join([*path, leaf_names[leaf]])


def _synthetic_state_dict() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A pytorch-fid-style state dict with OIHW weights, and the arrays it should become."""
  rng = np.random.default_rng(14)
  flat = {
    name: rng.normal(size=shape).astype(np.float32)
    for name, shape in fid_inception.expected_inception_shapes().items()
  }
  state_dict = {
    _torch_name(name): value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    for name, value in flat.items()
  }
  # Present in the real checkpoint or in newer torch, and not needed for pool3.
  state_dict["fc.weight"] = np.zeros((1008, 2048), np.float32)
  state_dict["fc.bias"] = np.zeros((1008,), np.float32)
  state_dict["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.zeros((), np.int64)
  return state_dict, flat


def test_convert_pytorch_fid_state_dict():
  state_dict, flat = _synthetic_state_dict()
  assert state_dict["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert state_dict["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
  converted = fid_inception.convert_pytorch_fid_state_dict(state_dict)
  assert converted.keys() == flat.keys()
  for name, value in flat.items():
    np.testing.assert_array_equal(converted[name], value, err_msg=name)


def test_convert_pytorch_fid_state_dict_errors():
  state_dict, _ = _synthetic_state_dict()
  with pytest.raises(DataError, match="unknown pytorch-fid parameter names: Mixed_5b.mystery"):
    fid_inception.convert_pytorch_fid_state_dict({**state_dict, "Mixed_5b.mystery": np.zeros(1)})
  del state_dict["Mixed_7b.branch1x1.bn.running_var"]
  with pytest.raises(DataError, match="missing: batch_stats/Mixed_7b/branch1x1/bn/var"):
    fid_inception.convert_pytorch_fid_state_dict(state_dict)


# ------------------------------------------- Inception FID in a run's evaluation


@pytest.fixture(scope="module")
def weights_file(inception, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
  np.savez(path, **fid_inception.flatten_variables(jax.device_get(inception[0])))
  return str(path)


def _fid_run(tmp_path, n_test=4, n_synthetic=6):
  """A finished run's directory: config.json, synthetic.npz, and its data file."""
  import json
  from vpntk_jax.blocks import DataConfig
  from vpntk_jax.config import RunConfig
  data = tmp_path / "d.npz"
  np.savez(data, x=_images((8, 16, 16, 1), 20), y=np.arange(8) % 2,
           x_test=_images((n_test, 16, 16, 1), 21), y_test=np.arange(n_test) % 2)
  run = tmp_path / "run"
  run.mkdir()
  config = RunConfig(data=DataConfig(source=str(data)), classifiers=("sklearn-logistic_regression",),
                     eval_train_size=4)
  (run / "config.json").write_text(json.dumps(config.to_json()))
  np.savez(run / "synthetic.npz", images=_images((n_synthetic, 16, 16, 1), 22),
           labels=np.arange(n_synthetic) % 2)
  return run, data


def test_evaluate_with_inception_weights_matches_a_direct_computation(
    inception, weights_file, tmp_path, monkeypatch, capsys):
  import json
  from vpntk_jax import cli
  monkeypatch.setattr(fid, "FEATURES_BATCH_SIZE", 2)  # the fixture's compiled batch
  run, data = _fid_run(tmp_path)
  assert cli.main(["evaluate", str(run), "--fid-weights", weights_file, "--fid-samples", "4",
                   "--quiet"]) == 0
  scores = json.loads((run / "metrics.json").read_text())["inception"]
  # Directly: features of the 4 balanced synthetic rows and of the test set,
  # Gaussian statistics by numpy, the Frechet distance in its symmetric form.
  _, feature_fn = inception
  from vpntk_jax.evaluation.protocol import balanced_subsample
  with np.load(run / "synthetic.npz") as z:
    synthetic = z["images"][balanced_subsample(z["labels"], 2, seed=0)]  # 2 per class
  with np.load(data) as z:
    test = z["x_test"][..., None] if z["x_test"].ndim == 3 else z["x_test"]
  fa = np.asarray(fid.features_in_batches(feature_fn, synthetic, 2), np.float64)
  fb = np.asarray(fid.features_in_batches(feature_fn, test, 2), np.float64)
  # With S1 = A A^T and S2 = B B^T (A, B: centred features / sqrt(n - 1)), the
  # eigenvalues of S1^1/2 S2 S1^1/2 are those of the small (A^T B)(B^T A).
  a = (fa - fa.mean(0)).T / np.sqrt(len(fa) - 1)
  b = (fb - fb.mean(0)).T / np.sqrt(len(fb) - 1)
  cross = np.sqrt(np.clip(np.linalg.eigvalsh((a.T @ b) @ (b.T @ a)), 0, None)).sum()
  direct = (np.sum((fa.mean(0) - fb.mean(0)) ** 2) + np.sum(a * a) + np.sum(b * b) - 2 * cross)
  assert scores["fid"] == pytest.approx(direct, rel=1e-6)
  assert scores["num_a"] == 4 and scores["num_b"] == 4 and "kid_mean" in scores
  assert scores["weights"] == weights_file and len(scores["weights_sha256"]) == 64

  # The stored-statistics round trip: the test set's (mu, sigma) in pytorch-fid's
  # format give the same FID.
  stats = tmp_path / "fid_stats.npz"
  fid.save_statistics(stats, fb.mean(0), np.cov(fb, rowvar=False))
  with np.load(stats) as z:
    assert sorted(z.files) == ["mu", "sigma"] and z["sigma"].shape == (2048, 2048)
  assert cli.main(["evaluate", str(run), "--fid-weights", weights_file, "--fid-stats",
                   str(stats), "--fid-samples", "4", "--quiet"]) == 0
  from_stats = json.loads((run / "metrics.json").read_text())["inception"]
  assert from_stats["fid"] == pytest.approx(direct, rel=1e-6)
  assert from_stats["reference"] == str(stats) and "kid_mean" not in from_stats
  capsys.readouterr()
  from vpntk_jax import report  # rewritten by vpntk evaluate
  assert f"Inception FID {report.fmt_num(from_stats['fid'])} of 4 synthetic images" in (
      run / "report.md").read_text()


def test_bad_fid_files_are_refused_before_anything_is_written(weights_file, tmp_path, capsys):
  from vpntk_jax import cli
  run, data = _fid_run(tmp_path)
  before = sorted(p.name for p in run.iterdir())
  assert cli.main(["evaluate", str(run), "--fid-weights", str(tmp_path / "missing.npz")]) == 2
  assert "Inception weights" in capsys.readouterr().err
  bad_stats = tmp_path / "stats.npz"
  np.savez(bad_stats, mean=np.zeros(3))
  assert cli.main(["evaluate", str(run), "--fid-weights", weights_file, "--fid-stats",
                   str(bad_stats)]) == 2
  assert "'mu' and 'sigma'" in capsys.readouterr().err
  assert cli.main(["evaluate", str(run), "--fid-stats", str(bad_stats)]) == 2
  assert "--fid-weights" in capsys.readouterr().err
  assert sorted(p.name for p in run.iterdir()) == before
  out = tmp_path / "new"
  assert cli.main(["synthesize", "--data", str(data), "--out", str(out), "--fid-weights",
                   str(tmp_path / "missing.npz"), "--quiet"]) == 2
  assert not out.exists()
