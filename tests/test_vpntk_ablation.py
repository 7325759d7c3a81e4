"""experiments/vpntk_ablation.py: variants that post-process a base vp-ntk release."""
# pylint: disable=redefined-outer-name

import json
import sys

from public_fixtures import vp_args

from vpntk_jax import cli


def test_ablation_script_reuses_the_base_release_and_writes_its_results_file(
    tiny_public, private_npz, tmp_path, monkeypatch, capsys):
  from experiments import vpntk_ablation  # pylint: disable=import-outside-toplevel
  base = tmp_path / "base"
  assert cli.main(vp_args(private_npz, tiny_public[0], base)) == 0
  default_results = open(vpntk_ablation.RESULTS, "rb").read()
  results, out = tmp_path / "ablation.json", tmp_path / "variants"
  earlier = {"alpha 10": {"base": "runs/other", "accuracy": {"logistic_regression": 0.5}}}
  results.write_text(json.dumps(earlier))
  argv = ["vpntk_ablation", "--base", str(base), "--steps", "2", "--batch-size", "20",
          "--num-synthetic", "100", "--classifiers", "sklearn-logistic_regression",
          "--variants", "loss mmd only", "--out", str(out), "--results", str(results)]
  monkeypatch.setattr(sys, "argv", argv)
  vpntk_ablation.main()
  rows = json.loads(results.read_text())
  assert rows["alpha 10"] == earlier["alpha 10"]  # rows accumulate
  row = rows["loss mmd only"]
  assert row["overrides"] == {"loss": "mmd"} and row["base"] == str(base) and row["steps"] == 2
  (run,) = out.iterdir()
  assert json.loads((run / "config.json").read_text())["loss"] == "mmd"
  # Post-processing of the base release only: the same noisy arrays, the same ledger.
  assert (run / "release.npz").read_bytes() == (base / "release.npz").read_bytes()
  assert json.loads((run / "privacy.json").read_text())["releases"] == json.loads(
      (base / "privacy.json").read_text())["releases"]
  assert open(vpntk_ablation.RESULTS, "rb").read() == default_results  # the project's file
  table = capsys.readouterr().out
  assert "| loss mmd only |" in table and "| alpha 10 | 0.500 |" in table
  # A second call finds the variant finished and does not redo it.
  stamp = (run / "metrics.json").stat().st_mtime_ns
  vpntk_ablation.main()
  assert (run / "metrics.json").stat().st_mtime_ns == stamp
  assert json.loads(results.read_text()) == rows
