"""`vpntk privacy --steps T ...`: DP-SGD's noise multiplier for an epsilon or epsilon for a
noise multiplier, printed as Opacus' z (std / clip norm) beside the library's sigma
(std / L2 sensitivity); the single-release answer stays as it was."""

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation

from vpntk_jax import cli
from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import accounting, subsampled
from vpntk_jax.privacy.dp_sgd_budget import dp_sgd_table

Q, STEPS, DELTA = 0.1, 20, 1e-5


def _opacus_epsilon(z: float, relation: NeighboringRelation) -> float:
  """Epsilon of z = noise std / clip norm, straight from dp-accounting (whose Gaussian
  multiplier is noise std / one record's bound under both relations)."""
  acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=1e-4)
  acc.compose(dp_event.SelfComposedDpEvent(
      dp_event.PoissonSampledDpEvent(Q, dp_event.GaussianDpEvent(z)), STEPS))
  return acc.get_epsilon(DELTA)


def _row(table, adjacency, accountant="pld"):
  return next(r for r in table["rows"]
              if (r["adjacency"], r["accountant"]) == (adjacency, accountant))


def test_calibrated_noise_meets_the_budget_in_both_conventions():
  table = dp_sgd_table(DELTA, steps=STEPS, sampling_rate=Q, epsilon=2.0)
  for adjacency, factor in (("add_remove", 1.0), ("replace_one", 2.0)):
    row = _row(table, adjacency)
    assert row["z"] == pytest.approx(factor * row["sigma"], rel=1e-12)
    # The calibrated noise spends the budget, and not much less (the search's rtol).
    assert 2.0 * 0.99 <= row["epsilon"] <= 2.0
    relation = subsampled.NEIGHBORING_RELATIONS[adjacency]
    assert _opacus_epsilon(row["z"], relation) == pytest.approx(row["epsilon"], rel=1e-2)
  assert _row(table, "add_remove", "rdp")["epsilon"] <= 2.0
  assert _row(table, "replace_one", "rdp")["z"] is None  # no RDP bound there


def test_a_given_z_is_the_same_noise_per_clip_norm_under_both_adjacencies():
  by_z = dp_sgd_table(DELTA, steps=STEPS, sampling_rate=Q, noise_multiplier=1.5)
  assert _row(by_z, "replace_one")["sigma"] == pytest.approx(0.75)
  assert _row(by_z, "add_remove")["sigma"] == pytest.approx(1.5)
  for adjacency in ("add_remove", "replace_one"):
    relation = subsampled.NEIGHBORING_RELATIONS[adjacency]
    assert _row(by_z, adjacency)["epsilon"] == pytest.approx(
        _opacus_epsilon(1.5, relation), rel=1e-2)
  # Replacing one record is two changes: the same z spends more.
  assert _row(by_z, "replace_one")["epsilon"] > _row(by_z, "add_remove")["epsilon"]
  by_sigma = dp_sgd_table(DELTA, steps=STEPS, sampling_rate=Q, sigma=0.75,
                          adjacencies=("replace_one",))
  assert [r["adjacency"] for r in by_sigma["rows"]] == ["replace_one", "replace_one"]
  assert _row(by_sigma, "replace_one")["epsilon"] == pytest.approx(
      _row(by_z, "replace_one")["epsilon"], rel=1e-9)


def test_expected_batch_and_dataset_size_give_the_sampling_rate():
  a = dp_sgd_table(DELTA, steps=STEPS, batch_size=50, num_examples=500, noise_multiplier=2.0,
                   adjacencies=("add_remove",))
  b = dp_sgd_table(DELTA, steps=STEPS, sampling_rate=Q, noise_multiplier=2.0,
                   adjacencies=("add_remove",))
  assert a["sampling_rate"] == Q
  assert _row(a, "add_remove")["epsilon"] == pytest.approx(_row(b, "add_remove")["epsilon"])


@pytest.mark.parametrize("kwargs, message", [
    (dict(sampling_rate=Q), "exactly one of"),
    (dict(sampling_rate=Q, epsilon=1.0, sigma=1.0), "exactly one of"),
    (dict(epsilon=1.0), "needs the sampling rate"),
    (dict(epsilon=1.0, sampling_rate=Q, batch_size=5, num_examples=50), "needs the sampling"),
    (dict(epsilon=1.0, batch_size=5), "--num-examples"),
    (dict(epsilon=1.0, batch_size=60, num_examples=50), "exceeds the dataset size"),
    (dict(epsilon=1.0, sampling_rate=0.0), "sampling_rate"),
    (dict(noise_multiplier=0.0, sampling_rate=Q), "noise_multiplier"),
    (dict(epsilon=1.0, sampling_rate=Q, adjacencies=("replace",)), "adjacency"),
])
def test_bad_dp_sgd_questions_are_config_errors(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    dp_sgd_table(DELTA, steps=STEPS, **kwargs)


def test_cli_prints_z_beside_sigma_and_keeps_the_single_release_table(capsys):
  assert cli.main(["privacy", "--delta", str(DELTA), "--steps", str(STEPS), "--batch-size",
                   "10", "--num-examples", "100", "--noise-multiplier", "1.5", "--adjacency",
                   "replace_one"]) == 0
  out = capsys.readouterr().out
  header = next(line for line in out.splitlines() if line.startswith("adjacency"))
  assert header.split()[:5] == ["adjacency", "accountant", "z", "sigma", "epsilon"]
  row = next(line for line in out.splitlines() if line.startswith("replace_one  pld"))
  assert [float(v) for v in row.split()[2:4]] == pytest.approx([1.5, 0.75])
  assert "Opacus" in out and "2C under replace_one" in out
  assert cli.main(["privacy", "--delta", "1e-5", "--steps", "5", "--sampling-rate", "0.1",
                   "--epsilon", "3", "--json"]) == 0
  table = json.loads(capsys.readouterr().out)
  assert table["mechanism"] == "dp_sgd" and len(table["rows"]) == 4
  # Without --steps: the single release's table, exactly as before.
  assert cli.main(["privacy", "--epsilon", "1", "--delta", "1e-5", "--num-examples", "100"]) == 0
  assert capsys.readouterr().out == accounting.format_sigma_table(
      accounting.sigma_table(1.0, 1e-5, 100)) + "\n"


@pytest.mark.parametrize("argv, message", [
    (["--epsilon", "1", "--delta", "1e-5", "--sampling-rate", "0.1"], "--steps"),
    (["--delta", "1e-5"], "needs --epsilon"),
    (["--delta", "1e-5", "--steps", "3", "--sampling-rate", "2", "--sigma", "1"], "sampling_rate"),
    (["--delta", "1e-5", "--steps", "3", "--sampling-rate", "0.1", "--sigma", "1",
      "--noise-multiplier", "1"], "--noise-multiplier, --sigma"),
])
def test_cli_bad_dp_sgd_input_exits_2(capsys, argv, message):
  assert cli.main(["privacy", *argv]) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
