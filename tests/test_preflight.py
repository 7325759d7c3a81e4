"""Preflight: what would fail after a release fails before it, so a refused run has
spent nothing and written nothing."""

import numpy as np

from vpntk_jax import cli


def _face_folder(root, size=25, per_class=8):
  """A user's image folder of size x size grey crops in two classes."""
  from PIL import Image
  rng = np.random.default_rng(0)
  for name in ("face", "other"):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      Image.fromarray(rng.integers(0, 256, (size, size), np.uint8)).save(root / name / f"{i}.png")
  return root


def _folder_run(data, out, *extra):
  return ["synthesize", "--method", "dp-ntk", "--data", str(data), "--test-data", "none",
          "--classes", "face,other", "--channels", "1", "--out", str(out), "--epsilon", "1",
          "--steps", "2", "--batch-size", "10", "--num-synthetic", "20",
          "--config.ntk_layers=16,relu,layernorm,2", "--quiet", *extra]


def test_a_size_the_generator_cannot_make_is_refused_before_the_release(tmp_path, capsys):
  data = _face_folder(tmp_path / "faces")
  out = tmp_path / "run"
  assert cli.main(_folder_run(data, out, "--image-size", "25")) == 2
  err = capsys.readouterr().err
  assert "25x25" in err and "24 or 28" in err and "Traceback" not in err
  assert not out.exists()  # no release, no privacy.json


def test_a_size_the_generator_can_make_runs(tmp_path):
  data = _face_folder(tmp_path / "faces")
  out = tmp_path / "run"
  assert cli.main(_folder_run(data, out, "--image-size", "24")) == 0
  assert (out / "privacy.json").exists() and (out / "synthetic.npz").exists()
