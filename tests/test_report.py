"""Tests for vpntk_jax.report: the per-run Markdown/HTML report."""

import base64
import json
import os

import numpy as np
import pytest
from PIL import Image

from test_textual_inversion import _args as ti_args
from test_textual_inversion import data, public_model  # noqa: F401  (fixtures: a tiny dpagg-ti run)
from vpntk_jax import cli, report
from vpntk_jax.errors import RunDirError
from vpntk_jax.privacy import PrivacyLedger, ReleaseRecord, calibrate_gaussian, write_ledger

N = 1000
DELTA = 1e-5
ACCURACY = {"logistic_regression": 0.7662, "mlp": 0.7755, "cnn": 0.7748}
PROTOCOL = "class-balanced subsample; accuracy on all real test images"
# sigma for (1, 1e-5) with the exact analytic Gaussian: cheap to compose in tests.
SIGMA = calibrate_gaussian(1.0, DELTA, accountant="analytic")


def _record(name: str, *, status: str = "active", noise_seed: int | None = None,
            sigma: float = SIGMA, sha256: str | None = None) -> ReleaseRecord:
  return ReleaseRecord.make(
      name, sensitivity=2.0 / N, sigma=sigma, adjacency="replace_one", accountant="analytic",
      epsilon=1.0, delta=DELTA, num_private_examples=N, noise_seed=noise_seed, shape=(10, 4),
      status=status, sha256=sha256)


def _ledger(*records: ReleaseRecord, accountant: str = "analytic") -> PrivacyLedger:
  ledger = PrivacyLedger(epsilon=1.0, delta=DELTA, accountant=accountant,
                         adjacency="replace_one")
  for r in records:
    ledger = ledger.add(r)
  return ledger


def _png(path, value: int) -> None:
  Image.fromarray(np.full((4, 6), value, np.uint8)).save(path)


def _write_json(path, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)


def _config(**extra) -> dict:
  return {"method": "dp-ntk", "data": "fashion_mnist", "epsilon": 1.0, "delta": DELTA,
          "accountant": "analytic", "adjacency": "replace_one", "noise_seed": None, "seed": 3,
          "train": {"steps": 20, "batch_size": 50}, **extra}


def _make_run(path, *, ledger: PrivacyLedger | None = None, complete: bool = True,
              config: dict | None = None) -> str:
  """A fake run directory; `complete=False` leaves out everything after the release."""
  path.mkdir(parents=True, exist_ok=True)
  _write_json(path / "config.json", config or _config())
  write_ledger(path / "privacy.json", ledger or _ledger(_record("labelled_mean_embedding")))
  np.savez(path / "release.npz", embedding=np.zeros((10, 4)))
  if complete:
    (path / "train_log.csv").write_text("step,loss,seconds\n0,1.0,0.1\n")
    np.savez(path / "synthetic.npz", images=np.zeros((2, 4, 4, 1), np.uint8), labels=[0, 1])
    _png(path / "samples.png", 200)
    _png(path / "loss.png", 50)
    _write_json(path / "metrics.json", {
        "accuracy": ACCURACY, "seconds": {"cnn": 12.5}, "fid": 31.25, "kid_mean": 0.0125,
        "train_size": 6000, "protocol": PROTOCOL, "test_set": "fashion_mnist:test",
        "environment": {"backend": "gpu", "device": "NVIDIA H100 80GB HBM3", "jax": "0.11.2"}})
  return str(path)


def _render(run_dir: str) -> tuple[dict, str, str]:
  r = report.build_report(run_dir)
  return r, report.render_markdown(r, run_dir), report.render_html(r, run_dir)


def test_privacy_statement_states_epsilon_delta_and_n(tmp_path):
  r, md, page = _render(_make_run(tmp_path / "run"))
  statement = ("(epsilon = 1, delta = 1e-05)-differentially private with respect to the "
               f"{N} private training examples of fashion_mnist under replace-one adjacency")
  assert r["privacy"]["statement"].startswith("This synthetic data set is " + statement)
  assert statement in md and statement in page
  assert "factor of e^epsilon = 2.718, plus delta = 1e-05" in md
  assert r["privacy"]["within_budget"] and not r["privacy"]["warnings"]
  assert "WARNING" not in md and 'class="warning"' not in page
  assert "labelled_mean_embedding" in md and "secret (OS entropy)" in md
  assert "not recorded" in md  # a ledger from before release digests were kept
  assert "fashion_mnist:test" in md  # the evaluation-only test set is named as not covered
  assert r["missing"] == []


def test_superseded_release_listed_and_over_budget_warned(tmp_path):
  ledger = _ledger(_record("first_try", noise_seed=7), _record("labelled_mean_embedding"),
                   accountant="pld").add(_record("extra")).supersede_active("replaced")
  ledger = ledger.add(_record("final", sha256="0123456789abcdef" * 4))
  r, md, page = _render(_make_run(tmp_path / "run", ledger=ledger))
  assert "| 0123456789ab |" in md and "0123456789abc" not in md
  names = [x["name"] for x in r["privacy"]["releases"]]
  assert names == ["first_try", "labelled_mean_embedding", "extra", "final"]
  assert md.count("superseded (still charged)") == 3
  assert not r["privacy"]["within_budget"] and r["privacy"]["total_epsilon"] > 1.0
  assert "> **WARNING: OVER BUDGET" in md and "OVER BUDGET" in page
  assert 'class="warning"' in page
  # Over budget, the statement gives the composed epsilon that does hold, not the budget.
  assert f"(epsilon = {report.fmt_num(r['privacy']['total_epsilon'])}," in md
  assert "fixed seed 7" in md


def test_html_embeds_images_as_data_uris(tmp_path):
  run = _make_run(tmp_path / "run")
  _, md, page = _render(run)
  for name in ("samples.png", "loss.png"):
    with open(os.path.join(run, name), "rb") as f:
      assert "data:image/png;base64," + base64.b64encode(f.read()).decode() in page
    assert f"]({name})" in md
  assert 'src="samples.png"' not in page


def test_markdown_metrics_table_has_accuracies_and_extras(tmp_path):
  _, md, page = _render(_make_run(tmp_path / "run"))
  for clf, acc in ACCURACY.items():
    assert f"| {clf} | {acc} |" in md
    assert f"<td>{acc}</td>" in page
  assert "| cnn | 0.7748 | 12.5 |" in md and "| mlp | 0.7755 | - |" in md
  assert "| fid | 31.25 |" in md and "| kid_mean | 0.0125 |" in md
  assert PROTOCOL in md
  where = "Computed on: backend gpu, device NVIDIA H100 80GB HBM3, jax 0.11.2"
  assert where in md and where in page
  assert "| train.steps | 20 |" in md and "| seed | 3 |" in md


def test_partial_run_lists_missing_parts(tmp_path):
  run = _make_run(tmp_path / "run", complete=False)
  r, md, page = _render(run)
  missing = [m["file"] for m in r["missing"]]
  assert missing == ["train_log.csv", "synthetic.npz", "samples.png", "loss.png",
                     "metrics.json"]
  assert "## Missing parts" in md and "`metrics.json`" in md
  assert "metrics.json is missing." in md and "samples.png</code> is missing" in page
  # The release is done, so the statement stands; there is no synthetic data set yet.
  assert "This run's private release (and anything later computed from it) is (epsilon = 1," in md


def test_release_without_ledger_is_flagged(tmp_path):
  run = _make_run(tmp_path / "run", complete=False)
  os.remove(os.path.join(run, "privacy.json"))
  r, md, _ = _render(run)
  assert r["privacy"]["status"] == "missing"
  assert "no privacy guarantee can be stated" in md
  assert "UNCHARGED RELEASE" in md


def test_unreadable_ledger_is_reported(tmp_path):
  run = _make_run(tmp_path / "run")
  (tmp_path / "run" / "privacy.json").write_text("{not json")
  r, md, _ = _render(run)
  assert r["privacy"]["status"] == "unreadable" and "cannot be read" in md


def test_public_model_named_as_not_covered(tmp_path):
  run = _make_run(tmp_path / "run", config=_config(method="vp-ntk", public_model="mnist_cnn"))
  _write_json(tmp_path / "run" / "public.json", {"name": "vp_ntk_net", "trained_on": "mnist"})
  _, md, _ = _render(run)
  # public.json (what the run actually used) wins over the config's path.
  assert "The public model vp_ntk_net (trained on mnist) is treated as public" in md
  assert "mnist_cnn" not in md.split("Not covered")[1].split("##")[0]
  (tmp_path / "run" / "public.json").unlink()
  _, md, _ = _render(run)
  assert "The public model mnist_cnn is treated as public" in md


def test_config_tolerates_unknown_and_missing_keys(tmp_path):
  run = _make_run(tmp_path / "run", config={"method": "vp-ntk", "future_knob": 1})
  r, md, _ = _render(run)
  assert r["config"]["rows"] == [["method", "vp-ntk"]]
  assert "unknown data" in md


def test_html_escapes_text(tmp_path):
  run = _make_run(tmp_path / "run", config=_config(data="<script>x</script>"))
  _, md, page = _render(run)
  assert "<script>" not in page and "&lt;script&gt;" in page
  assert "<script>" not in md


def test_not_a_run_dir_raises(tmp_path):
  with pytest.raises(RunDirError, match="no config.json"):
    report.build_report(str(tmp_path))
  with pytest.raises(RunDirError, match="not a directory"):
    report.write_report(str(tmp_path / "absent"))
  (tmp_path / "config.json").write_text("[1, 2")
  with pytest.raises(RunDirError, match="cannot be read"):
    report.build_report(str(tmp_path))


def test_write_report_is_atomic_and_repeatable(tmp_path):
  run = _make_run(tmp_path / "run")
  before = set(os.listdir(run))
  for _ in range(2):  # the second call replaces the first report in place
    md_path, html_path = report.write_report(run)
  assert (md_path, html_path) == (os.path.join(run, "report.md"), os.path.join(run, "report.html"))
  assert set(os.listdir(run)) == before | {"report.md", "report.html"}  # no temp files left
  with open(html_path, encoding="utf-8") as f:
    assert f.read().startswith("<!DOCTYPE html>")
  with open(md_path, encoding="utf-8") as f:
    assert f.read().startswith("# Run report: run")


def test_an_epsilon_beyond_float_exp_is_reported_not_a_crash(tmp_path):
  sigma = calibrate_gaussian(800.0, DELTA, accountant="analytic")
  record = ReleaseRecord.make(
      "embedding", sensitivity=2.0 / N, sigma=sigma, adjacency="replace_one",
      accountant="analytic", epsilon=800.0, delta=DELTA, num_private_examples=N,
      noise_seed=None, shape=(10, 4))
  ledger = PrivacyLedger(epsilon=800.0, delta=DELTA, accountant="analytic",
                         adjacency="replace_one").add(record)
  run = _make_run(tmp_path / "run", ledger=ledger, config=_config(epsilon=800.0))
  _, md, _ = _render(run)
  assert "e^epsilon = 10^347" in md


def test_a_seeded_release_is_headlined_as_not_private(tmp_path):
  ledger = _ledger(_record("labelled_mean_embedding", noise_seed=11))
  r, md, _ = _render(_make_run(tmp_path / "run", ledger=ledger))
  assert r["privacy"]["statement"].startswith("NOT PRIVATE while the noise seed (11) is known")
  assert "> **WARNING: NOT PRIVATE while the seed is known" in md
  assert "not_private_while_seed_known" in json.loads(
      (tmp_path / "run" / "privacy.json").read_text())
  clean, md, _ = _render(_make_run(tmp_path / "clean", ledger=_ledger(
      _record("labelled_mean_embedding"))))
  assert "NOT PRIVATE" not in md and "NOT PRIVATE" not in clean["privacy"]["statement"]


@pytest.mark.parametrize("dp_steps,missing", [(5, ["dp_sgd_log.csv"]), (0, [])])
def test_the_method_says_which_training_logs_a_complete_run_has(tmp_path, dp_steps, missing):
  # dpsgd-ti trains no generator: no train_log.csv or loss.png, and DP-SGD's log
  # only where it has steps; a stored train block is not a setting it reads.
  config = _config(method="dpsgd-ti", options={"diffusion_model": "public",
                                               "dp_sgd": {"steps": dp_steps}})
  run = _make_run(tmp_path / "run", config=config)
  for name in ("train_log.csv", "loss.png"):
    os.remove(os.path.join(run, name))
  r, md, page = _render(run)
  assert [m["file"] for m in r["missing"]] == missing
  assert ("## Missing parts" in md) == bool(missing)
  assert [img["file"] for img in r["images"]] == ["samples.png"]
  assert "loss.png" not in md and "loss.png" not in page and "## Samples\n" in md
  keys = [k for k, _ in r["config"]["rows"]]
  assert "options.dp_sgd.steps" in keys and not any(k.startswith("train.") for k in keys)


def test_a_finished_dpagg_ti_run_is_reported_complete(data, public_model, tmp_path):
  out = tmp_path / "dpagg"
  assert cli.main(ti_args("dpagg-ti", data, out, public_model)) == 0
  r, md, page = _render(str(out))
  assert r["missing"] == [] and "Missing parts" not in md and "incomplete" not in page
  assert not (out / "train_log.csv").exists() and "Training loss" not in md
  rows = dict(r["config"]["rows"])
  assert rows["options.inversion.steps"] == 2 and rows["method"] == "dpagg-ti"
  # Generator training's settings are stored with their defaults but unused.
  assert not any(k.startswith("train.") or k == "validation_noise_scale" for k in rows)
  # The report the run wrote itself says the same.
  assert "Missing parts" not in (out / "report.md").read_text()


def test_a_missing_fid_is_said_and_a_digest_keeps_its_full_value(tmp_path):
  full = "0123456789abcdef" * 4
  run = _make_run(tmp_path / "run", ledger=_ledger(_record("final", sha256=full)))
  _, md, page = _render(run)
  assert "FID was not computed" not in md  # this run's metrics have an FID
  metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
  for key in ("fid", "kid_mean"):
    metrics.pop(key)
  _write_json(tmp_path / "run" / "metrics.json", metrics)
  _, md, page = _render(run)
  assert "FID was not computed" in md and "FID was not computed" in page
  # The table shows 12 digits; the page keeps all 64 as the cell's title.
  assert f'title="{full}">0123456789ab</td>' in page and full not in md
  _write_json(tmp_path / "run" / "metrics.json", {**metrics, "inception": {
      "fid": 12.5, "num_a": 10, "reference": "fashion_mnist:test", "weights_sha256": full}})
  _, md, _ = _render(run)
  assert "Inception FID 12.5" in md and "FID was not computed" not in md
  _write_json(tmp_path / "run" / "metrics.json", {"evaluated": False, "reason": "no test set"})
  _, md, _ = _render(run)
  assert "Not evaluated" in md and "FID was not computed" not in md
