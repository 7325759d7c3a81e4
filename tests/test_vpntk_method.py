"""The vp-ntk method end to end: a run and its resumption, bad input that writes
nothing, reusing a release, pixel features with other public models, and
`vpntk pretrain`."""
# pylint: disable=redefined-outer-name

import json
import os
import shutil

import numpy as np

from public_fixtures import vp_args

from vpntk_jax import cli


def test_vpntk_run_end_to_end_and_resume(tiny_public, private_npz, tmp_path):
  out = tmp_path / "vp"
  assert cli.main(vp_args(private_npz, tiny_public[0], out, "--kappa", "0.5",
                          "--config.options.prompt.image_prompt=pad")) == 0
  for name in ("config.json", "privacy.json", "release.npz", "public.json", "synthetic.npz",
               "samples.png", "metrics.json", "report.html", "report.md"):
    assert (out / name).exists(), name
  config = json.loads((out / "config.json").read_text())
  prompt = config["options"]["prompt"]
  assert prompt["kappa"] == 0.5 and prompt["image_prompt"] == "pad"
  assert json.loads((out / "public.json").read_text())["path"] == os.path.abspath(tiny_public[0])
  distance = json.loads((out / "metrics.json").read_text())["public_feature_distance"]
  assert np.isfinite(distance["fid"]) and distance["fid"] > 0 and distance["num_b"] == 200
  release = (out / "release.npz").read_bytes()
  assert cli.main(vp_args(private_npz, tiny_public[0], out, "--kappa", "0.5",
                          "--config.options.prompt.image_prompt=pad", "--resume",
                          "--steps", "6")) == 0
  assert (out / "release.npz").read_bytes() == release
  assert "is treated as public" in (out / "report.md").read_text()


def test_vpntk_bad_input_writes_nothing(tiny_public, private_npz, tmp_path, capsys):
  out = tmp_path / "bad"
  assert cli.main(vp_args(private_npz, tmp_path / "nowhere", out)) == 2
  assert "public.json missing" in capsys.readouterr().err
  assert cli.main(vp_args(private_npz, tiny_public[0], out, "--image-size", "32")) == 2
  assert "trained for" in capsys.readouterr().err
  assert cli.main(vp_args(private_npz, tiny_public[0], out, "--label-map", "0,1,99")) == 2
  assert "label_map lists 3 classes" in capsys.readouterr().err
  # Public data overlapping the private data is refused when asked.
  digits = np.load(tiny_public[1])
  overlap = tmp_path / "overlap.npz"
  # The test split declares the classes (the schema is public), so it holds all of them.
  np.savez(overlap, x=digits["x"][:100], y=digits["y"][:100], x_test=digits["x"][:100],
           y_test=digits["y"][:100])
  assert cli.main(vp_args(str(overlap), tiny_public[0], out, "--check-public-overlap")) == 2
  assert "also occur in the private set" in capsys.readouterr().err
  assert not out.exists()


def test_reuse_release_for_post_processing_only(tiny_public, private_npz, tmp_path, capsys):
  base = tmp_path / "base"
  assert cli.main(vp_args(private_npz, tiny_public[0], base)) == 0
  ablation = tmp_path / "alpha"
  assert cli.main(vp_args(private_npz, tiny_public[0], ablation, "--alpha", "10", "--kappa",
                          "2", "--prompt-resolution", "7", "--reuse-release", str(base))) == 0
  config = json.loads((ablation / "config.json").read_text())
  assert config["options"]["prompt"]["prompt_resolution"] == 7
  assert (ablation / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((ablation / "privacy.json").read_text())["releases"] == json.loads(
      (base / "privacy.json").read_text())["releases"]
  # A setting that changes the release cannot reuse it; nothing is written.
  other = tmp_path / "eps"
  assert cli.main(vp_args(private_npz, tiny_public[0], other, "--epsilon", "2",
                          "--reuse-release", str(base))) == 2
  assert "epsilon differ" in capsys.readouterr().err and not other.exists()
  # On extractor features the public models shape the release itself.
  other_public = tmp_path / "other_public"
  shutil.copytree(tiny_public[0], other_public)
  moved = tmp_path / "other_public_run"
  assert cli.main(vp_args(private_npz, other_public, moved, "--reuse-release", str(base))) == 2
  assert "public_model differ" in capsys.readouterr().err and not moved.exists()


def test_reuse_release_on_pixels_with_other_public_models(tiny_public, private_npz, tmp_path):
  other_public = tmp_path / "other_public"
  shutil.copytree(tiny_public[0], other_public)
  # On pixels the public generator only receives the prompts: a release may move to another.
  base = tmp_path / "pixels"
  assert cli.main(vp_args(private_npz, tiny_public[0], base,
                          "--config.options.features=pixels")) == 0
  moved = tmp_path / "pixels_other"
  assert cli.main(vp_args(private_npz, other_public, moved, "--config.options.features=pixels",
                          "--reuse-release", str(base))) == 0
  assert (moved / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((moved / "public.json").read_text())["path"] == str(other_public)


def test_pretrain_cli(tiny_public, tmp_path, capsys):
  out = tmp_path / "pub"
  args = ["pretrain", "--data", str(tiny_public[1]), "--out", str(out), "--steps", "2",
          "--batch-size", "20", "--extractor-epochs", "1", "--quiet",
          "--config.ntk_layers=16,relu,layernorm,10", "--config.extractor_widths=4,8",
          "--config.extractor_hidden=8"]
  assert cli.main(args) == 0
  spec = json.loads((out / "public.json").read_text())
  assert spec["extractor"]["widths"] == [4, 8] and spec["pretrain_config"]["train"]["steps"] == 2
  before = (out / "public.json").read_bytes()
  assert cli.main(args) == 2  # refuses to overwrite
  assert "--force" in capsys.readouterr().err
  assert (out / "public.json").read_bytes() == before
  assert cli.main(args + ["--config.extractor_hiden=8"]) == 2
  assert "extractor_hidden" in capsys.readouterr().err
