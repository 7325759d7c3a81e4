"""`vpntk export --fid-weights`: the synthetic set's FID statistics beside gen.npz, fitted
as DPImageBench's evaluator fits them (vpntk_jax.evaluation.dpimagebench_fid). Random
Inception weights: these tests check the path and the file, not FID values."""

import json

import jax
import numpy as np
import pytest

from vpntk_jax import cli
from vpntk_jax import export
from vpntk_jax.blocks import DataConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.errors import DataError
from vpntk_jax.evaluation import dpimagebench_fid, fid
from vpntk_jax.models import inception

NUM_IMAGES = 4  # one Inception compile, for this batch size


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  variables = inception.init_inception_params(jax.random.key(0))
  path = tmp_path_factory.mktemp("inception") / "random_inception.npz"
  np.savez(path, **inception.flatten_variables(jax.device_get(variables)))
  return str(path)


def _run_dir(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  config = RunConfig(data=DataConfig(source=str(tmp_path / "own.npz")), epsilon=10.0)
  (run / "config.json").write_text(json.dumps(config.to_json()))
  images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 28, 28, 1), np.uint8)
  images[0] = 0
  images[1] = 255
  np.savez(run / "synthetic.npz", images=images, labels=np.arange(NUM_IMAGES) % 2)
  return run, images


def _as_dpimagebench_sees_it(gen_npz):
  """gen.npz's x as fld hands it to Inception: ToPILImage's x.mul(255).byte() in
  float32 (truncation), grey kept as one channel (the network repeats it)."""
  with np.load(gen_npz) as z:
    x = z["x"]
  return np.transpose(np.trunc(x * np.float32(255)).astype(np.uint8), (0, 2, 3, 1))


def test_export_writes_dpimagebench_fid_statistics(weights_file, tmp_path, capsys):
  run, images = _run_dir(tmp_path)
  out = tmp_path / "bench"
  assert cli.main(["export", str(run), "--out", str(out), "--fid-weights", weights_file]) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out)["fid_statistics"]
  assert "FID statistics not written" not in captured.err
  stats = out / "gen" / "gen_fid_stats.npz"
  with np.load(stats) as z:
    assert sorted(z.files) == ["mu", "sigma"]  # DPImageBench's fid_stats_<res>.npz keys
    mu, sigma = z["mu"], z["sigma"]
  assert mu.shape == (2048,) and mu.dtype == np.float32
  assert sigma.shape == (2048, 2048) and sigma.dtype == np.float64
  assert summary["file"] == str(stats) and summary["num_images"] == NUM_IMAGES
  assert summary["mu"] == [[2048], "float32"] and len(summary["weights_sha256"]) == 64
  assert "private" in summary["reference"] and "fid" not in summary

  # DPImageBench's Inception sees exactly the run's pixels ...
  pixels = _as_dpimagebench_sees_it(out / "gen" / "gen.npz")
  np.testing.assert_array_equal(pixels, images)
  # ... and the statistics are those of vpntk's own FID features of them.
  feature_fn = inception.inception_feature_fn(inception.load_inception_params(weights_file))
  features = fid.features_in_batches(feature_fn, pixels, NUM_IMAGES)
  direct_mu, direct_sigma = features.mean(0), np.cov(features, rowvar=False)
  scale = np.abs(direct_sigma).max()
  np.testing.assert_allclose(mu, direct_mu, rtol=1e-5, atol=1e-5 * np.abs(direct_mu).max())
  np.testing.assert_allclose(sigma, direct_sigma, rtol=1e-5, atol=1e-6 * scale)

  # With a reference file, the FID against it.
  reference = tmp_path / "fid_stats_28.npz"
  fid.save_statistics(reference, direct_mu + 0.5, 2.0 * direct_sigma)
  assert cli.main(["export", str(run), "--out", str(out), "--force", "--fid-weights",
                   weights_file, "--fid-stats", str(reference)]) == 0
  summary = json.loads(capsys.readouterr().out)["fid_statistics"]
  expected = fid.frechet_distance(direct_mu, direct_sigma, direct_mu + 0.5, 2.0 * direct_sigma)
  assert summary["fid"] == pytest.approx(expected, rel=1e-4)
  assert summary["fid_reference"] == str(reference)

  # Re-exported without weights: gen.npz as before, the earlier statistics gone (they
  # would claim to be of it), and one line saying why.
  assert cli.main(["export", str(run), "--out", str(out), "--force"]) == 0
  captured = capsys.readouterr()
  assert json.loads(captured.out)["fid_statistics"] is None
  lines = [line for line in captured.err.splitlines() if "FID statistics not written" in line]
  assert len(lines) == 1 and "--fid-weights" in lines[0]
  assert (out / "gen" / "gen.npz").exists() and not stats.exists()


def test_no_weights_writes_gen_npz_and_says_why(tmp_path, capsys):
  run, _ = _run_dir(tmp_path)
  out = tmp_path / "bench"
  assert cli.main(["export", str(run), "--out", str(out)]) == 0
  captured = capsys.readouterr()
  assert captured.err.count("FID statistics not written") == 1
  assert sorted(p.name for p in (out / "gen").iterdir()) == ["gen.npz"]


def test_bad_weights_are_an_error_before_anything_is_written(tmp_path, capsys):
  run, _ = _run_dir(tmp_path)
  out = tmp_path / "bench"
  missing = tmp_path / "missing.npz"
  assert cli.main(["export", str(run), "--out", str(out), "--fid-weights", str(missing)]) == 2
  err = capsys.readouterr().err
  assert str(missing) in err and "Inception weights" in err and "Traceback" not in err
  assert not out.exists()
  corrupt = tmp_path / "corrupt.npz"
  corrupt.write_bytes(b"PK\x03\x04 not a zip archive")
  assert cli.main(["export", str(run), "--out", str(out), "--fid-weights", str(corrupt)]) == 2
  assert str(corrupt) in capsys.readouterr().err and not out.exists()
  # Over an earlier export: it stays as it was.
  assert cli.main(["export", str(run), "--out", str(out)]) == 0
  before = (out / "gen" / "gen.npz").read_bytes()
  assert cli.main(["export", str(run), "--out", str(out), "--force", "--fid-weights",
                   str(corrupt)]) == 2
  assert (out / "gen" / "gen.npz").read_bytes() == before
  assert not (out / "gen" / "gen_fid_stats.npz").exists()
  assert cli.main(["export", str(run), "--out", str(tmp_path / "b"), "--fid-stats",
                   str(corrupt)]) == 2
  assert "--fid-weights" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_pixels_are_truncated_as_torchvision_s_to_pil_image():
  levels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  x = export.to_dpimagebench(levels, np.zeros(1))["x"]
  # Every level of an export survives x * 255 truncated ...
  np.testing.assert_array_equal(dpimagebench_fid.dpimagebench_pixels(x), levels)
  # ... other values are truncated, not rounded.
  x = np.array([0.0, 0.5, 0.999, 1.0], np.float32).reshape(1, 1, 2, 2)
  assert dpimagebench_fid.dpimagebench_pixels(x).ravel().tolist() == [0, 127, 254, 255]
  for bad in (np.full((1, 1, 2, 2), 1.5), np.full((1, 1, 2, 2), np.nan),
              np.zeros((1, 2, 2, 2)), np.zeros((1, 1, 2, 2), np.uint8)):
    with pytest.raises(DataError):
      dpimagebench_fid.dpimagebench_pixels(bad)


def test_at_most_50000_synthetic_images_as_fld_s_fid_takes():
  np.testing.assert_array_equal(dpimagebench_fid.subset_rows(10, seed=0), np.arange(10))
  rows = dpimagebench_fid.subset_rows(60000, seed=0)
  assert len(rows) == len(np.unique(rows)) == 50000 and 0 <= rows.min() and rows.max() < 60000
  np.testing.assert_array_equal(rows, dpimagebench_fid.subset_rows(60000, seed=0))
  assert not np.array_equal(rows, dpimagebench_fid.subset_rows(60000, seed=1))
