"""privacy.json carries the run's composed dp-accounting event: anyone can re-derive
the total epsilon with dp-accounting alone, for plain Gaussian releases and DP-SGD."""

import pytest

from rederive import rederive_epsilon
from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy import PrivacyLedger, read_ledger, subsampled, write_ledger
from vpntk_jax.privacy.ledger import ReleaseRecord

DELTA = 1e-5


def _gaussian(adjacency, sigma=4.0, name="embedding"):
  return ReleaseRecord.make(name, sensitivity=0.01, sigma=sigma, adjacency=adjacency,
                            accountant="pld", epsilon=1.0, delta=DELTA,
                            num_private_examples=200, noise_seed=None, shape=(8, 3))


def _dp_sgd(adjacency, sigma=1.1, q=0.02, steps=300, max_batch=None):
  event = subsampled.dp_sgd_event(sigma, q, steps, adjacency=adjacency, num_examples=5000,
                                  max_batch=max_batch)
  return ReleaseRecord.make("dp_sgd", sensitivity=1e-3, sigma=sigma, adjacency=adjacency,
                            accountant="pld", epsilon=1.0, delta=DELTA,
                            num_private_examples=5000, noise_seed=None, shape=(1000,),
                            mechanism="dp_sgd", dp_event=subsampled.event_to_json(event),
                            sampling_rate=q, steps=steps, clip_norm=1e-3)


@pytest.mark.parametrize("adjacency", ["replace_one", "add_remove"])
def test_gaussian_ledgers_keep_their_epsilon_and_rederive_from_the_file(adjacency, tmp_path):
  ledger = PrivacyLedger(epsilon=1.0, delta=DELTA, accountant="pld", adjacency=adjacency)
  ledger = ledger.add(_gaussian(adjacency)).add(_gaussian(adjacency, 40.0, "validation"))
  write_ledger(tmp_path / "privacy.json", ledger)
  assert rederive_epsilon(tmp_path / "privacy.json") == pytest.approx(ledger.total_epsilon(), rel=1e-3)


@pytest.mark.parametrize("adjacency", ["replace_one", "add_remove"])
def test_dp_sgd_steps_compose_with_the_query_in_one_accountant(adjacency, tmp_path):
  ledger = PrivacyLedger(epsilon=1.0, delta=DELTA, accountant="pld", adjacency=adjacency)
  ledger = ledger.add(_gaussian(adjacency, 50.0, "query")).add(_dp_sgd(adjacency))
  expected = subsampled.epsilon_of(1.1, DELTA, sampling_rate=0.02, steps=300,
                                   adjacency=adjacency, other_sigmas=[50.0])
  assert ledger.total_epsilon() == pytest.approx(expected, rel=1e-6)
  write_ledger(tmp_path / "privacy.json", ledger)
  assert read_ledger(tmp_path / "privacy.json").total_epsilon() == pytest.approx(expected)
  assert rederive_epsilon(tmp_path / "privacy.json") == pytest.approx(expected, rel=1e-3)
  # The steps cost more than the query alone and less than with no noise at all.
  alone = PrivacyLedger(epsilon=1.0, delta=DELTA, accountant="pld", adjacency=adjacency)
  assert alone.add(_gaussian(adjacency, 50.0, "query")).total_epsilon() < expected


def test_a_subsampled_record_without_its_event_is_refused():
  record = _dp_sgd("add_remove").to_json()
  record["dp_event"] = None
  with pytest.raises(ConfigError, match="no dp_event"):
    ReleaseRecord.from_json(record)


def test_records_written_before_mechanisms_were_kept_still_load():
  record = _gaussian("replace_one").to_json()
  for key in ("mechanism", "dp_event", "sampling_rate", "steps", "clip_norm",
              "num_examples_source"):
    record.pop(key)
  assert ReleaseRecord.from_json(record).mechanism == "gaussian"
