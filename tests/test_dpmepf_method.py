"""DP-MEPF: perceptual moments of the public extractor, and a dp-mepf run."""
# pylint: disable=redefined-outer-name

import jax.numpy as jnp
import numpy as np
import pytest

from public_fixtures import vp_args

from vpntk_jax import cli, public
from vpntk_jax.features.perceptual import PerceptualFeatureMap


def test_perceptual_moments_bound_and_agree(tiny_public):
  models = public.load_public(str(tiny_public[0]))
  fmap = PerceptualFeatureMap(models.extractor, models.extractor_params, (28, 28, 1),
                              second_moment_weight=0.5)
  assert fmap.norm_bound == pytest.approx(np.sqrt(1.25))
  rng = np.random.default_rng(0)
  images = np.concatenate([np.zeros((1, 28, 28, 1), np.uint8), np.full((1, 28, 28, 1), 255,
                                                                         np.uint8),
                           rng.integers(0, 256, (18, 28, 28, 1), np.uint8)])
  labels = np.repeat(np.arange(10), 2)
  for i in range(len(images)):  # every single example's contribution is bounded
    one = fmap.private_sum(images[i:i + 1], labels[i:i + 1], 10)["mepf"]
    assert float(jnp.linalg.norm(one)) <= fmap.norm_bound
  private = fmap.private_sum(images, labels, 10)["mepf"] / len(images)
  x = jnp.asarray(images.astype(np.float32) / 255).reshape(10, 2, -1)
  np.testing.assert_allclose(private, fmap.synthetic_mean(x)["mepf"], rtol=1e-4, atol=1e-7)
  assert fmap.template(10)["mepf"].shape == private.shape


def test_dpmepf_run(tiny_public, private_npz, tmp_path):
  out = tmp_path / "mepf"
  args = vp_args(private_npz, tiny_public[0], out)
  args[args.index("vp-ntk")] = "dp-mepf"
  assert cli.main(args) == 0
  assert "dp-mepf" in (out / "privacy.json").read_text()
  assert (out / "synthetic.npz").exists() and (out / "public.json").exists()
  assert cli.main(vp_args(private_npz, tmp_path / "none", tmp_path / "m2")[:1] +
                  ["--method", "dp-mepf", "--data", private_npz, "--out",
                   str(tmp_path / "m2")]) == 2
  assert not (tmp_path / "m2").exists()
