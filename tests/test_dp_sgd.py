"""DP-SGD: the per-example clip bound under float32, exact lattice sums, Poisson
batches, and the subsampled-Gaussian accounting (privacy.subsampled)."""

import functools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.privacy_accountant import NeighboringRelation
from scipy import stats

from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.privacy import accounting, noise, release, subsampled
from vpntk_jax.privacy import dp_sgd

DIM = 6
ROWS = 64
PRIVIMAGE = dict(sampling_rate=4096 / 55000, steps=2014, adjacency="add_remove")
PRIVIMAGE_DELTA = 1.67e-6
OPTIMIZER = optax.adam(0.05)  # one object: its jitted update compiles once


def mlp_loss(params, example, key):
  """One example's loss; the key adds a data-independent perturbation like a diffusion
  loss's noise draw."""
  x, y = example
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logit = (h @ params["w2"])[0] + params["b2"][0]
  return optax.sigmoid_binary_cross_entropy(logit, y) + 0.01 * jax.random.normal(key) * logit


def logistic_loss(params, example, key):
  del key
  x, y = example
  return optax.sigmoid_binary_cross_entropy(x @ params["w"] + params["b"], y)


def mlp_params():
  rng = np.random.default_rng(0)  # (numpy: jax.random here would only add compile time)
  return {"w1": jnp.asarray(rng.normal(size=(DIM, 8)), jnp.float32), "b1": jnp.zeros(8),
          "w2": jnp.asarray(rng.normal(size=(8, 1)), jnp.float32), "b2": jnp.zeros(1)}


def adversarial_batch(rows=ROWS, seed=0):
  """Inputs from 1e-30 to 1e30 (gradients far past any clip norm), one inf, one zero row."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, DIM)) * 10.0 ** rng.integers(-30, 31, size=(rows, 1))
  x = x.astype(np.float32)
  x[3, 0] = np.inf
  x[4] = 0.0
  x[7] = 3.0  # a row with a gradient far past the clip (and not saturated): replaced below
  y = (np.arange(rows) % 2).astype(np.float32)
  return (jnp.asarray(x), jnp.asarray(y))


@functools.lru_cache(maxsize=None)
def keys(rows=ROWS):
  return jax.random.split(jax.random.key(1), rows)


def exact_norms(tree):
  """L2 norm of each row, float64, with a correctly rounded sum of exact squares
  (float32 squared is exact in float64)."""
  leaves = [np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in jax.tree.leaves(tree)]
  rows = np.concatenate(leaves, axis=1)
  return np.array([math.sqrt(math.fsum(r * r)) for r in rows])


def int_norm_squared(v):
  return sum(int(a) * int(a) for a in v)


# --- clipping -----------------------------------------------------------------------

def test_clip_bound_holds_exactly_for_adversarial_gradients():
  rng = np.random.default_rng(1)
  c = 1.0
  # 3,000 coordinates over two leaves (the second above one reduction chunk): huge,
  # near float32 max, subnormal and mixed magnitudes, plus NaN / inf / zero rows.
  a = (rng.normal(size=(40, 7)) * 10.0 ** rng.integers(-44, 37, size=(40, 7))).astype(np.float32)
  b = (rng.normal(size=(40, 2993)) * 10.0 ** rng.integers(-44, 37, size=(40, 1))).astype(
      np.float32)
  b[0, :] = np.float32(3e38)
  b[1] = 1e-45
  a[2, 0], a[3, 0], a[4], b[4] = np.nan, -np.inf, 0.0, 0.0
  b[5] = np.float32(c / math.sqrt(2993) * 0.5)  # inside the ball: left (almost) as is
  a[5] = 0.0
  grads = {"a": jnp.asarray(a), "b": jnp.asarray(b)}
  clipped = dp_sgd.clip_per_example(grads, c)
  norms = exact_norms(clipped)
  assert np.all(norms <= c), norms.max()
  assert np.all(norms[[2, 3, 4]] == 0.0)  # non-finite and zero gradients contribute 0
  finite = np.all(np.isfinite(a), 1) & np.all(np.isfinite(b), 1)
  big = (exact_norms(grads) > 2 * c) & finite
  assert big.sum() > 20
  assert np.all(norms[big] > c * (1 - 1e-4))  # the clip is tight, not just safe
  np.testing.assert_allclose(np.asarray(clipped["b"][5]), b[5], rtol=1e-6)


def test_per_example_grads_match_one_at_a_time():
  params = mlp_params()
  # ROWS rows (the shape the other tests compile for), 8 of them checked.
  x = (0.3 * np.random.default_rng(2).normal(size=(ROWS, DIM))).astype(np.float32)
  y = (np.arange(ROWS) % 2).astype(np.float32)
  ks = keys()
  batched = dp_sgd.per_example_grads(mlp_loss, params, (jnp.asarray(x), jnp.asarray(y)), ks)
  batched = jax.tree.map(np.asarray, batched)
  grad = jax.jit(jax.grad(mlp_loss))
  for i in range(8):
    single = grad(params, (x[i], y[i]), ks[i])
    for name in params:
      np.testing.assert_allclose(batched[name][i], single[name], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
def test_neighbouring_lattice_sums_differ_by_at_most_one_clipped_example(adjacency):
  params, c = mlp_params(), 1e-3
  data, ks = adversarial_batch(), keys()
  mask = np.ones(ROWS, np.float32)
  lattice = dp_sgd.lattice_for(params, c)
  g, d = lattice.granularity, lattice.size
  # Every clipped per-example gradient, in float64: norm <= C.
  clipped = dp_sgd.clip_per_example(dp_sgd.per_example_grads(mlp_loss, params, data, ks), c)
  assert np.all(exact_norms(clipped) <= c)
  base = dp_sgd.lattice_grad_sum(mlp_loss, params, data, mask, ks, c)
  if adjacency == "add_remove":
    mask2 = mask.copy()
    mask2[7] = 0.0
    other = dp_sgd.lattice_grad_sum(mlp_loss, params, data, mask2, ks, c)
    bound = c / g + math.sqrt(d) / 2
  else:
    x2, y2 = np.array(data[0]), np.array(data[1])
    x2[7], y2[7] = -3.0, 1.0 - y2[7]  # the opposite direction, the other label
    other = dp_sgd.lattice_grad_sum(mlp_loss, params, (jnp.asarray(x2), jnp.asarray(y2)), mask,
                                    ks, c)
    bound = 2 * (c / g + math.sqrt(d) / 2)
  diff = base - other
  assert int_norm_squared(diff) <= bound**2
  assert int_norm_squared(diff) > (0.5 * c / g)**2  # the example did count
  # ... within what the release's noise is scaled to (index_sensitivity, x2 for replace).
  factor = 2 if adjacency == "replace_one" else 1
  assert math.sqrt(int_norm_squared(diff)) <= factor * lattice.index_sensitivity


def test_padding_rows_contribute_exactly_zero():
  params, c = mlp_params(), 1e-3
  data, ks = adversarial_batch(), keys()
  mask = np.ones(ROWS, np.float32)
  # The same real rows followed by 64 garbage rows (inf, NaN), masked out; summed in
  # two microbatches of 64.
  garbage = np.full((ROWS, DIM), np.nan, np.float32)
  garbage[::2] = np.inf
  padded = (jnp.concatenate([data[0], jnp.asarray(garbage)]), jnp.concatenate([data[1]] * 2))
  pmask = np.concatenate([mask, np.zeros(ROWS, np.float32)])
  pkeys = jnp.concatenate([ks, keys(2 * ROWS)[ROWS:]])
  exact = dp_sgd.lattice_grad_sum(mlp_loss, params, data, mask, ks, c)
  np.testing.assert_array_equal(
      dp_sgd.lattice_grad_sum(mlp_loss, params, padded, pmask, pkeys, c, microbatch=ROWS), exact)
  # The float32 sum (inspection only) agrees up to rounding, and masks rows too.
  half = mask.copy()
  half[ROWS // 2:] = 0
  total = dp_sgd.clipped_grad_sum(mlp_loss, params, data, half, ks, c)
  clipped = dp_sgd.clip_per_example(dp_sgd.per_example_grads(mlp_loss, params, data, ks), c)
  for name in params:
    np.testing.assert_allclose(total[name], np.sum(np.asarray(clipped[name])[:ROWS // 2], 0),
                               rtol=1e-5, atol=1e-9)


# --- batches ------------------------------------------------------------------------

def test_poisson_batch_sizes_follow_the_binomial():
  rng = noise.generator(noise.noise_rng(123))
  n, q, draws = 1000, 0.1, 200
  total = 0
  for _ in range(draws):
    idx, mask = dp_sgd.poisson_batch(rng, n, q)
    real = int(mask.sum())
    assert idx.shape == mask.shape and idx.shape[0] % dp_sgd.BUCKET == 0
    assert idx.shape[0] == dp_sgd.bucket_size(real)
    chosen = idx[:real]
    assert np.all(mask[:real] == 1) and np.all(mask[real:] == 0) and np.all(idx[real:] == 0)
    assert len(set(chosen.tolist())) == real and chosen.min() >= 0 and chosen.max() < n
    total += real
  # The total is Binomial(draws * n, q): a two-sided tail of 1e-6 would be a bug.
  dist = stats.binom(draws * n, q)
  assert min(dist.cdf(total), dist.sf(total - 1)) > 1e-6 / 2, total


def test_truncated_poisson_batch_is_cut_to_max_batch():
  rng = noise.generator(noise.noise_rng(5))
  idx, mask = dp_sgd.poisson_batch(rng, 500, 0.5, max_batch=100, bucket=32)
  assert mask.sum() == 100 and idx.shape == (128,)
  assert len(set(idx[:100].tolist())) == 100
  with pytest.raises(ConfigError, match="numpy Generator"):
    dp_sgd.poisson_batch(np.random.RandomState(0), 10, 0.5)


# --- accounting ---------------------------------------------------------------------

def test_privimage_noise_multipliers_reproduce():
  # RESEARCH.md: PLD 13.91 at eps 1 and 1.93 at eps 10; RDP 14.92 / 2.03.
  eps = lambda s, a="pld": subsampled.epsilon_of(s, PRIVIMAGE_DELTA, accountant=a, **PRIVIMAGE)
  assert eps(13.91) == pytest.approx(1.0, rel=0.01)
  assert eps(1.93) == pytest.approx(10.0, rel=0.01)
  assert eps(14.92, "rdp") == pytest.approx(1.0, rel=0.01)
  assert eps(2.03, "rdp") == pytest.approx(10.0, rel=0.01)
  # The query (sigma 50) alone costs about 0.068, in composition about 0.004.
  assert accounting.epsilon_of([50.0], PRIVIMAGE_DELTA) == pytest.approx(0.068, abs=0.002)
  with_query = subsampled.epsilon_of(13.91, PRIVIMAGE_DELTA, other_sigmas=[50.0], **PRIVIMAGE)
  assert 0.002 < with_query - eps(13.91) < 0.006


def test_calibration_is_minimal_and_reproduces_privimage_at_epsilon_10():
  fast = dict(PRIVIMAGE, discretization=1e-3)  # a 10x coarser PLD grid than the default
  sigma = subsampled.calibrate_noise_multiplier(10.0, PRIVIMAGE_DELTA, **fast)
  assert sigma == pytest.approx(1.93, rel=0.01)
  assert subsampled.epsilon_of(sigma, PRIVIMAGE_DELTA, **fast) <= 10.0
  assert subsampled.epsilon_of(sigma * (1 - 1e-3), PRIVIMAGE_DELTA, **fast) > 10.0


def test_calibration_is_minimal_under_replace_one_with_other_releases():
  setting = dict(sampling_rate=0.05, steps=50, adjacency="replace_one", other_sigmas=(20.0,),
                 discretization=1e-3)
  sigma = subsampled.calibrate_noise_multiplier(2.0, 1e-5, **setting)
  assert subsampled.epsilon_of(sigma, 1e-5, **setting) <= 2.0
  assert subsampled.epsilon_of(sigma * (1 - 1e-3), 1e-5, **setting) > 2.0


def test_replace_one_without_subsampling_is_the_house_gaussian():
  # The factor 2 between house and dp-accounting multipliers under replace_one: at q = 1,
  # T replace-one steps with sensitivity 2C are T Gaussian releases of multiplier sigma.
  got = subsampled.epsilon_of(3.0, 1e-5, sampling_rate=1.0, steps=4, adjacency="replace_one")
  assert got == pytest.approx(accounting.epsilon_of([3.0] * 4, 1e-5), rel=1e-3)
  plain = subsampled.event_epsilon(
      dp_event.ComposedDpEvent(subsampled.gaussian_events([3.0], adjacency="replace_one")),
      1e-5, adjacency="replace_one")
  assert plain == pytest.approx(accounting.epsilon_of([3.0], 1e-5), rel=1e-3)


def test_truncated_batches_are_accounted_as_truncated():
  setting = dict(sampling_rate=0.1, steps=20, adjacency="add_remove", discretization=1e-3)
  poisson = subsampled.epsilon_of(2.0, 1e-5, **setting)
  loose = subsampled.epsilon_of(2.0, 1e-5, num_examples=1000, max_batch=1000, **setting)
  tight = subsampled.epsilon_of(2.0, 1e-5, num_examples=1000, max_batch=100, **setting)
  assert loose == pytest.approx(poisson, rel=1e-3)
  assert tight > poisson * 1.05
  event = subsampled.dp_sgd_event(2.0, 0.1, 20, adjacency="add_remove", num_examples=1000,
                                  max_batch=100)
  assert isinstance(event.event, dp_event.TruncatedSubsampledGaussianDpEvent)
  with pytest.raises(ConfigError, match="num_examples"):
    subsampled.dp_sgd_event(2.0, 0.1, 20, adjacency="add_remove", max_batch=100)
  with pytest.raises(ConfigError, match="truncated"):
    subsampled.epsilon_of(2.0, 1e-5, sampling_rate=0.1, steps=20, adjacency="add_remove",
                          accountant="rdp", num_examples=1000, max_batch=100)


def test_event_json_round_trip_rederives_epsilon_with_dp_accounting_alone():
  event = subsampled.run_event(2.0, sampling_rate=0.05, steps=30, adjacency="replace_one",
                               other_sigmas=[10.0, 10.0, 40.0])
  text = json.dumps(subsampled.event_to_json(event))
  back = subsampled.event_from_json(json.loads(text))
  assert back == event
  acc = pld_privacy_accountant.PLDAccountant(NeighboringRelation.REPLACE_ONE)
  acc.compose(back)
  ours = subsampled.epsilon_of(2.0, 1e-5, sampling_rate=0.05, steps=30,
                               adjacency="replace_one", other_sigmas=[10.0, 10.0, 40.0])
  assert acc.get_epsilon(1e-5) == pytest.approx(ours, rel=1e-3)
  bad = json.loads(text)
  bad["module_name"] = "os"
  with pytest.raises(DataError, match="refusing"):
    subsampled.event_from_json(bad)


def test_rdp_under_replace_one_and_analytic_are_refused():
  with pytest.raises(ConfigError, match="rdp.*replace_one"):
    subsampled.epsilon_of(2.0, 1e-5, sampling_rate=0.1, steps=10, adjacency="replace_one",
                          accountant="rdp")
  with pytest.raises(ConfigError, match="rdp.*replace_one"):
    subsampled.calibrate_noise_multiplier(1.0, 1e-5, sampling_rate=0.1, steps=10,
                                          adjacency="replace_one", accountant="rdp")
  with pytest.raises(ConfigError, match="analytic"):
    subsampled.epsilon_of(2.0, 1e-5, sampling_rate=0.1, steps=10, adjacency="add_remove",
                          accountant="analytic")


@pytest.mark.parametrize("kwargs,match", [
    (dict(sampling_rate=0.0), "sampling_rate"), (dict(sampling_rate=1.5), "sampling_rate"),
    (dict(sampling_rate=float("nan")), "sampling_rate"), (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"), (dict(steps=True), "steps"),
    (dict(noise_multiplier=0.0), "noise_multiplier"),
    (dict(noise_multiplier=float("inf")), "noise_multiplier"),
    (dict(adjacency="swap"), "adjacency")])
def test_bad_accounting_parameters_raise(kwargs, match):
  args = dict(noise_multiplier=1.0, sampling_rate=0.1, steps=10, adjacency="add_remove")
  args.update(kwargs)
  sigma = args.pop("noise_multiplier")
  with pytest.raises(ConfigError, match=match):
    subsampled.epsilon_of(sigma, 1e-5, **args)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf"), "1"])
def test_bad_clip_norm_raises(clip):
  with pytest.raises(ConfigError, match="clip_norm"):
    dp_sgd.make_dp_sgd_step(logistic_loss, optax.adam(1e-2), clip_norm=clip,
                            noise_multiplier=1.0, expected_batch_size=10.0,
                            adjacency="add_remove")
  with pytest.raises(ConfigError, match="clip_norm"):
    dp_sgd.clip_per_example({"w": jnp.ones((2, 3))}, clip)


# --- end to end ---------------------------------------------------------------------

@pytest.mark.parametrize("adjacency", ["add_remove", "replace_one"])
def test_dp_sgd_on_logistic_regression_draws_lattice_noise(adjacency, monkeypatch):
  rng = np.random.default_rng(0)
  n, q, c, sigma = 128, 0.25, 1.0, 0.7
  x = rng.normal(size=(n, DIM)).astype(np.float32)
  y = (x @ np.arange(1.0, DIM + 1) > 0).astype(np.float32)
  data = (jnp.asarray(x), jnp.asarray(y))
  params = {"w": jnp.zeros(DIM), "b": jnp.zeros(())}
  opt = OPTIMIZER
  calls = []
  real_release = release.gaussian_release

  def spy(statistic, *, sensitivity, sigma, rng):
    out, lattice = real_release(statistic, sensitivity=sensitivity, sigma=sigma, rng=rng)
    calls.append((sensitivity, sigma, out, lattice))
    return out, lattice
  monkeypatch.setattr(release, "gaussian_release", spy)
  step = dp_sgd.make_dp_sgd_step(logistic_loss, opt, clip_norm=c, noise_multiplier=sigma,
                                 expected_batch_size=q * n, adjacency=adjacency)
  seeds = noise.noise_rng(7).spawn(2)
  sample_rng, noise_rng = noise.generator(seeds[0]), noise.generator(seeds[1])
  state = opt.init(params)
  p = params
  for t in range(4):
    # Truncated at one bucket (one compiled shape); accounted with max_batch=64.
    idx, mask = dp_sgd.poisson_batch(sample_rng, n, q, max_batch=64)
    assert idx.shape == (64,)
    p, state = step(p, state, dp_sgd.gather(data, idx), mask,
                    jax.random.split(jax.random.key(t), idx.shape[0]), noise_rng)
  assert len(calls) == 4
  for sensitivity, z, out, lattice in calls:
    assert sensitivity == c
    assert z == subsampled.event_multiplier(sigma, adjacency)
    assert z == (2 * sigma if adjacency == "replace_one" else sigma)
    assert out.shape == (DIM + 1,)
    grid = out.astype(np.float64) / lattice.granularity
    np.testing.assert_array_equal(grid, np.rint(grid))  # every coordinate a lattice point
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(p))
  assert not np.allclose(p["w"], 0)
  assert subsampled.epsilon_of(sigma, 1e-5, sampling_rate=q, steps=4, adjacency=adjacency,
                               num_examples=n, max_batch=64, discretization=1e-3) < math.inf
  if adjacency == "add_remove":
    # The non-private baseline of the same model learns the direction.
    plain = dp_sgd.make_non_private_step(logistic_loss, opt)
    p, state = params, opt.init(params)
    mask = np.ones(n, np.float32)
    for t in range(30):
      p, state = plain(p, state, data, mask, keys(n))
    assert np.corrcoef(np.asarray(p["w"]), np.arange(1.0, DIM + 1))[0, 1] > 0.9


def test_step_memory_comes_from_the_compiled_step_and_microbatches_shrink_it():
  example = (np.zeros((DIM,), np.float32), np.zeros((), np.float32))
  whole = dp_sgd.step_memory_bytes(mlp_loss, mlp_params(), example, 512, 1.0)
  split = dp_sgd.step_memory_bytes(mlp_loss, mlp_params(), example, 512, 1.0, microbatch=64)
  assert whole > split > 0
  with pytest.raises(ConfigError, match="must divide"):
    dp_sgd.step_memory_bytes(mlp_loss, mlp_params(), example, 512, 1.0, microbatch=100)
