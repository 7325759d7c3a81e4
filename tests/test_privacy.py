"""Tests for vpntk_jax.privacy (calibration, Gaussian release, ledger) and io_utils."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy.noise import LATTICE_FACTOR
from vpntk_jax.io_utils import save_npz_atomic, write_bytes_atomic, write_json_atomic
from vpntk_jax.privacy import (
    ACCOUNTANTS,
    PrivacyLedger,
    ReleaseRecord,
    array_digest,
    calibrate_composition,
    calibrate_gaussian,
    check_epsilon_delta,
    epsilon_of,
    format_sigma_table,
    gaussian_release,
    generator,
    mean_embedding_sensitivity,
    noise_rng,
    read_ledger,
    sigma_table,
    write_ledger,
)

DELTA = 1e-5
EPSILONS = (0.2, 1.0, 10.0)


# --- calibration -------------------------------------------------------------


# DP-NTK / DP-MERF reference sigmas (autodp, delta 1e-5), printed to 4 significant
# figures: rounding alone allows ~2e-4 relative, so 1e-3 is a real check.
@pytest.mark.parametrize("epsilon, reference", [(0.2, 24.10), (1.0, 4.901), (10.0, 0.5679)])
def test_rdp_matches_dp_ntk_reference(epsilon, reference):
  assert calibrate_gaussian(epsilon, DELTA, accountant="rdp") == pytest.approx(reference, rel=1e-3)


def test_rdp_closed_form_is_the_minimum_over_orders():
  sigma = 3.0

  def bound(alpha):
    return alpha / (2 * sigma**2) + math.log(1 / DELTA) / (alpha - 1)

  numeric = scipy.optimize.minimize_scalar(bound, bounds=(1 + 1e-6, 1e4), method="bounded").fun
  assert epsilon_of([sigma], DELTA, accountant="rdp") == pytest.approx(numeric, rel=1e-7)


def test_rdp_is_the_classic_loose_conversion():
  # dp_accounting's RdpAccountant uses a tighter RDP->DP conversion: at our "rdp" sigma
  # it certifies a smaller epsilon, i.e. our "rdp" is conservative relative to it.
  sigma = calibrate_gaussian(1.0, DELTA, accountant="rdp")
  accountant = rdp_privacy_accountant.RdpAccountant()
  accountant.compose(dp_event.GaussianDpEvent(sigma))
  assert accountant.get_epsilon(DELTA) < 0.9


@pytest.mark.parametrize("epsilon, reference", [(1.0, 3.73), (10.0, 0.500)])
def test_analytic_matches_balle_wang(epsilon, reference):
  # References printed to 3 significant figures: rounding allows ~1.3e-3 relative.
  assert calibrate_gaussian(epsilon, DELTA, accountant="analytic") == pytest.approx(
      reference, rel=2e-3)


@pytest.mark.parametrize("epsilon", EPSILONS)
def test_pld_is_tight_and_never_below_exact(epsilon):
  exact = calibrate_gaussian(epsilon, DELTA, accountant="analytic")
  pld = calibrate_gaussian(epsilon, DELTA, accountant="pld")
  assert pld >= exact
  assert pld <= exact * (1 + 1e-4)


def test_pld_needs_20_percent_less_noise_than_reference_rdp():
  pld = calibrate_gaussian(1.0, DELTA, accountant="pld")
  rdp = calibrate_gaussian(1.0, DELTA, accountant="rdp")
  assert pld <= 0.8 * rdp


@pytest.mark.parametrize("accountant", ACCOUNTANTS)
@pytest.mark.parametrize("epsilon", EPSILONS)
def test_calibrated_sigma_spends_the_budget_but_not_more(accountant, epsilon):
  sigma = calibrate_gaussian(epsilon, DELTA, accountant=accountant)
  spent = epsilon_of([sigma], DELTA, accountant=accountant)
  assert spent <= epsilon  # calibration is never optimistic, not even by root-finder tolerance
  assert spent >= epsilon * (1 - 1e-4)


def test_composition_of_two_releases_matches_gaussian_dp():
  one = calibrate_gaussian(1.0, DELTA, accountant="pld")
  two = calibrate_gaussian(1.0, DELTA, accountant="pld", num_releases=2)
  assert two > one
  # Two Gaussian releases with sigma are exactly one with sigma / sqrt(2) (Gaussian DP).
  assert two == pytest.approx(one * math.sqrt(2), rel=1e-4)
  assert epsilon_of([two, two], DELTA) <= 1.0
  rdp_two = calibrate_gaussian(1.0, DELTA, accountant="rdp", num_releases=2)
  assert rdp_two == pytest.approx(calibrate_gaussian(1.0, DELTA, accountant="rdp") * math.sqrt(2))


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibrate_composition_with_noisier_validation_release(accountant):
  sigmas = calibrate_composition(1.0, DELTA, [1, 1, 10], accountant=accountant)
  assert sigmas[0] == sigmas[1]
  assert sigmas[2] == pytest.approx(10 * sigmas[0])
  spent = epsilon_of(sigmas, DELTA, accountant=accountant)
  assert spent <= 1.0
  assert spent == pytest.approx(1.0, rel=1e-4)
  # The composition equals one Gaussian with 1/s^2 = sum 1/s_k^2.
  single = calibrate_gaussian(1.0, DELTA, accountant="analytic" if accountant == "pld" else "rdp")
  assert sigmas[0] == pytest.approx(single * math.sqrt(2.01), rel=1e-4)


def test_epsilon_of_edge_cases():
  assert epsilon_of([0.0], DELTA) == math.inf
  assert epsilon_of([math.inf], DELTA) == 0.0
  assert epsilon_of([2.0, math.inf], DELTA, accountant="rdp") == epsilon_of(
      [2.0], DELTA, accountant="rdp")
  with pytest.raises(ConfigError, match="at least one"):
    epsilon_of([], DELTA)
  with pytest.raises(ConfigError, match=">= 0"):
    epsilon_of([-1.0], DELTA)


@pytest.mark.parametrize("epsilon, delta, match", [
    (0.0, DELTA, "epsilon"),
    (-1.0, DELTA, "epsilon"),
    (float("nan"), DELTA, "epsilon"),
    (float("inf"), DELTA, "epsilon"),
    ("1", DELTA, "epsilon"),
    (1.0, 0.0, "delta"),
    (1.0, 1.0, "delta"),
    (1.0, float("nan"), "delta"),
])
def test_bad_epsilon_delta(epsilon, delta, match):
  with pytest.raises(ConfigError, match=match):
    check_epsilon_delta(epsilon, delta)
  with pytest.raises(ConfigError, match=match):
    calibrate_gaussian(epsilon, delta)


def test_bad_accountant_and_release_counts():
  assert issubclass(ConfigError, ValueError)
  with pytest.raises(ConfigError, match="unknown accountant"):
    calibrate_gaussian(1.0, DELTA, accountant="moments")
  with pytest.raises(ConfigError, match="unknown accountant"):
    epsilon_of([1.0], DELTA, accountant="zcdp")
  with pytest.raises(ConfigError, match="single release"):
    calibrate_gaussian(1.0, DELTA, accountant="analytic", num_releases=2)
  with pytest.raises(ConfigError, match="single release"):
    calibrate_composition(1.0, DELTA, [1, 10], accountant="analytic")
  with pytest.raises(ConfigError, match="single release"):
    epsilon_of([1.0, 2.0], DELTA, accountant="analytic")
  with pytest.raises(ConfigError, match="num_releases"):
    calibrate_gaussian(1.0, DELTA, num_releases=0)
  with pytest.raises(ConfigError, match="weights"):
    calibrate_composition(1.0, DELTA, [1, 0])


def test_mean_embedding_sensitivity():
  assert mean_embedding_sensitivity(100, "replace_one") == pytest.approx(0.02)
  assert mean_embedding_sensitivity(100, "add_remove") == pytest.approx(0.01)
  sensitivity = mean_embedding_sensitivity(np.int64(50), "add_remove", norm_bound=2.0)
  assert sensitivity == pytest.approx(0.04)
  with pytest.raises(ConfigError, match="adjacency"):
    mean_embedding_sensitivity(100, "swap")
  with pytest.raises(ConfigError, match="num_examples"):
    mean_embedding_sensitivity(0, "replace_one")
  with pytest.raises(ConfigError, match="norm_bound"):
    mean_embedding_sensitivity(10, "replace_one", norm_bound=0.0)


def test_sigma_table_and_format():
  table = sigma_table(1.0, DELTA)
  assert table["epsilon"] == 1.0 and table["delta"] == DELTA
  assert set(table["sigma"]) == set(ACCOUNTANTS)
  assert table["sigma"]["analytic"] == pytest.approx(3.7306, rel=1e-4)
  text = format_sigma_table(table)
  for name in ACCOUNTANTS:
    assert name in text
  assert "4.9006" in text and "3.7306" in text


# --- Gaussian release --------------------------------------------------------


def _rng(seed):
  return generator(noise_rng(seed))


def test_gaussian_release_noise_scale():
  zeros = np.zeros((1_000_000,), np.float32)
  noisy, lattice = gaussian_release(zeros, sensitivity=0.5, sigma=3.0, rng=_rng(0))
  assert noisy.dtype == np.float32
  # The lattice's share of the sensitivity is at most 1/LATTICE_FACTOR.
  assert 0.5 < lattice.effective_sensitivity <= 0.5 * (1 + 1 / LATTICE_FACTOR)
  # Sampling error of the std estimate is ~1/sqrt(2n) = 7e-4 relative.
  assert noisy.std() == pytest.approx(1.5, rel=0.01)
  assert abs(noisy.mean()) < 0.01


def test_gaussian_release_is_on_its_lattice_and_the_rounding_is_charged():
  x = np.random.default_rng(0).normal(size=(300, 7)) * 1e-3
  noisy, lattice = gaussian_release(x, sensitivity=2e-3, sigma=1.0, rng=_rng(3))
  g = lattice.granularity
  assert g == 2.0 ** math.floor(math.log2(2e-3 / (LATTICE_FACTOR * math.sqrt(x.size))))
  index = np.rint(noisy.astype(np.float64) / g)
  np.testing.assert_array_equal((index * g).astype(np.float32), noisy)
  # Neighbours at distance = sensitivity, adversarially placed next to rounding
  # boundaries: their lattice indices differ by at most the recorded D.
  a = (np.arange(x.size) + 0.5 - 1e-9) * g
  b = a + 2e-3 * np.ones(x.size) / math.sqrt(x.size)
  b = b + 2e-9 * g  # pushes every coordinate across a boundary
  gap = np.linalg.norm((lattice.indices(b) - lattice.indices(a)).astype(np.float64))
  assert np.linalg.norm(b - a) <= 2e-3 * (1 + 1e-9)
  assert gap <= lattice.index_sensitivity


def test_gaussian_release_streams():
  stat = np.arange(64, dtype=np.float32)

  def release(seed):
    return gaussian_release(stat, sensitivity=1.0, sigma=1.0, rng=_rng(seed))[0]

  np.testing.assert_array_equal(release(7), release(7))
  assert not np.array_equal(release(7), release(8))
  assert not np.array_equal(release(None), release(None))


def test_gaussian_release_rejects_bad_input():
  stat = np.ones((4,))
  with pytest.raises(ConfigError, match="sensitivity"):
    gaussian_release(stat, sensitivity=0.0, sigma=1.0, rng=_rng(0))
  with pytest.raises(ConfigError, match="sigma"):
    gaussian_release(stat, sensitivity=1.0, sigma=-1.0, rng=_rng(0))
  with pytest.raises(DataError, match="NaN"):
    gaussian_release(np.array([np.nan, 1.0]), sensitivity=1.0, sigma=1.0, rng=_rng(0))
  with pytest.raises(DataError, match="beyond what a lattice"):
    gaussian_release(np.array([1e30, 1.0]), sensitivity=1.0, sigma=1.0, rng=_rng(0))
  with pytest.raises(ConfigError, match="seed"):
    noise_rng(2**32)
  with pytest.raises(ConfigError, match="seed"):
    noise_rng(1.5)


def test_gaussian_release_sigma_zero_is_loud():
  stat = np.arange(4, dtype=np.float32)
  with pytest.warns(UserWarning, match="NOT differentially private"):
    out, lattice = gaussian_release(stat, sensitivity=1.0, sigma=0.0, rng=_rng(0))
  np.testing.assert_array_equal(out, stat)
  assert lattice is None


# --- ledger ------------------------------------------------------------------


def _record(sigma: float, *, status: str = "active", seed=None, sha256=None) -> ReleaseRecord:
  return ReleaseRecord.make(
      "ntk_mean_embedding", sensitivity=2 / 60000, sigma=sigma, adjacency="replace_one",
      accountant="pld", epsilon=1.0, delta=DELTA, num_private_examples=60000,
      noise_seed=seed, shape=(10, 4096), status=status, sha256=sha256)


def _ledger() -> PrivacyLedger:
  return PrivacyLedger(epsilon=1.0, delta=DELTA, accountant="pld", adjacency="replace_one")


def test_ledger_json_round_trip(tmp_path):
  sigma = calibrate_gaussian(1.0, DELTA)
  ledger = _ledger().add(_record(sigma, seed=3, sha256=array_digest(np.zeros((10, 4096)))))
  assert ledger.releases[0].noise_std == pytest.approx(sigma * 2 / 60000)
  doc = json.loads(json.dumps(ledger.to_json(), allow_nan=False))
  assert PrivacyLedger.from_json(doc) == ledger
  for key in ("epsilon", "delta", "sigma", "sensitivity", "accountant", "adjacency",
              "num_private_examples", "total_epsilon", "within_budget", "releases"):
    assert key in doc
  assert doc["sigma"] == sigma and doc["num_private_examples"] == 60000
  assert doc["releases"][0]["shape"] == [10, 4096]
  assert doc["releases"][0]["sha256"] == ledger.releases[0].sha256
  write_ledger(tmp_path / "privacy.json", ledger)
  assert read_ledger(tmp_path / "privacy.json") == ledger
  # Records written before release digests were kept still load, without one.
  del doc["releases"][0]["sha256"]
  assert PrivacyLedger.from_json(doc).releases[0].sha256 is None


def test_array_digest_tells_dtype_shape_and_bytes_apart():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  assert array_digest(a) == array_digest(a.copy()) == array_digest(np.asfortranarray(a))
  assert array_digest(a) != array_digest(a.reshape(3, 2))
  assert array_digest(a) != array_digest(a.astype(np.float64))
  b = a.copy()
  b[1, 2] = np.nextafter(b[1, 2], np.float32(0))
  assert array_digest(a) != array_digest(b)


def test_ledger_total_epsilon_counts_superseded_releases():
  sigma = calibrate_gaussian(1.0, DELTA)
  ledger = _ledger().add(_record(sigma))
  assert ledger.total_epsilon() == pytest.approx(1.0, rel=1e-4)
  assert ledger.to_json()["within_budget"] is True
  rerun = ledger.supersede_active(notes="replaced").add(_record(sigma))
  assert [r.status for r in rerun.releases] == ["superseded", "active"]
  assert rerun.total_epsilon() > 1.2
  doc = rerun.to_json()
  assert doc["within_budget"] is False and not rerun.within_budget()
  assert doc["sigma"] == sigma  # the single active release
  assert PrivacyLedger.from_json(json.loads(json.dumps(doc))) == rerun


def test_ledger_analytic_with_several_releases_falls_back_to_pld():
  sigma = calibrate_gaussian(1.0, DELTA, accountant="analytic")
  ledger = PrivacyLedger(epsilon=1.0, delta=DELTA, accountant="analytic", adjacency="replace_one")
  one = ledger.add(_record(sigma))
  assert one.total_epsilon() == pytest.approx(1.0, rel=1e-9)
  assert one.add(_record(sigma)).total_epsilon() == pytest.approx(
      epsilon_of([sigma, sigma], DELTA, accountant="pld"))


def test_ledger_non_private_release_and_validation():
  ledger = _ledger().add(_record(0.0))
  doc = ledger.to_json()
  assert doc["total_epsilon"] == "inf" and doc["within_budget"] is False
  json.dumps(doc, allow_nan=False)  # strict JSON
  assert PrivacyLedger.from_json(doc).total_epsilon() == math.inf
  with pytest.raises(ConfigError, match="adjacency"):
    _ledger().add(ReleaseRecord.make(
        "x", sensitivity=1.0, sigma=1.0, adjacency="add_remove", accountant="pld", epsilon=1.0,
        delta=DELTA, num_private_examples=10, noise_seed=None, shape=(3,)))
  with pytest.raises(ConfigError, match="status"):
    _record(1.0, status="deleted")
  with pytest.raises(ConfigError, match="delta"):
    PrivacyLedger(epsilon=1.0, delta=0.0, accountant="pld", adjacency="replace_one")


# --- atomic writes -----------------------------------------------------------


def test_write_json_atomic_replaces_whole_file(tmp_path):
  path = tmp_path / "out.json"
  write_json_atomic(path, {"a": list(range(1000)), "np": np.float32(1.5)})
  write_json_atomic(path, {"b": 1})
  assert json.loads(path.read_text()) == {"b": 1}
  assert os.listdir(tmp_path) == ["out.json"]


def test_write_json_atomic_failure_keeps_old_file(tmp_path):
  path = tmp_path / "out.json"
  write_json_atomic(path, {"b": 1})
  with pytest.raises(TypeError):
    write_json_atomic(path, {"bad": object()})
  assert json.loads(path.read_text()) == {"b": 1}
  assert os.listdir(tmp_path) == ["out.json"]


def test_write_bytes_and_npz_atomic(tmp_path):
  write_bytes_atomic(tmp_path / "sub" / "blob.bin", b"\x00\x01")
  assert (tmp_path / "sub" / "blob.bin").read_bytes() == b"\x00\x01"
  path = tmp_path / "arrays.data"
  save_npz_atomic(path, x=np.arange(5), y=np.ones((2, 3), np.float32))
  with np.load(path) as loaded:
    np.testing.assert_array_equal(loaded["x"], np.arange(5))
    assert loaded["y"].shape == (2, 3)
  assert sorted(os.listdir(tmp_path)) == ["arrays.data", "sub"]


def test_an_accountant_that_cannot_reach_the_budget_is_named_not_a_traceback(capsys):
  from vpntk_jax import cli
  with pytest.raises(ConfigError, match="no noise multiplier reaches epsilon 1"):
    calibrate_gaussian(1.0, 1e-20, accountant="pld")
  table = sigma_table(1.0, 1e-20, num_examples=1000)
  assert table["sigma"]["pld"] is None and table["sigma"]["analytic"] > 0
  assert "pld" not in table["noise_std"]["replace_one"]
  assert cli.main(["privacy", "--epsilon", "1", "--delta", "1e-20"]) == 0
  assert "cannot reach this (epsilon, delta)" in capsys.readouterr().out
