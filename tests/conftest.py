"""Settings for the whole test session. CI speed only: the same computations (float
rounding aside)."""

import atexit
import os
import shutil
import tempfile

# On the tests' tiny shapes XLA's CPU backend optimisations cost more compile
# time than they save (test_pipeline.py: 19% less CPU time without them). Set
# before any test imports jax; subprocesses inherit it through os.environ.
_NO_BACKEND_OPT = "--xla_backend_optimization_level=0"
if _NO_BACKEND_OPT not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _NO_BACKEND_OPT).strip()

# One BLAS thread per process (numpy, scipy, sklearn; set before they load):
# on 2 cores shared by the pytest-xdist workers OpenBLAS's spinning threads
# make sklearn's small fits 10-40x slower (logistic regression on 1,000 8x8
# digits: 2.9 s with 2 threads, 0.07 s with one). JAX does not use OpenBLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# One persistent XLA compilation cache for the whole session, shared through
# os.environ by the pytest-xdist workers, the subprocesses the tests start
# (CLI runs, two-process jobs) and the notebook kernels: a program another
# process already compiled (same HLO, flags and JAX version, which are the
# cache key) is loaded instead of compiled again. Every compile is kept, as
# the tests' programs are many and each compiles in well under a second.
# No size limit: with one JAX scans the whole directory on every write (a
# quadratic cost over a session of thousands of entries). Two processes
# meeting on one entry can at worst read it half written: JAX then warns and
# compiles. The process that made the directory removes it at exit; a
# JAX_COMPILATION_CACHE_DIR already set (to keep compiles between local runs,
# say) is used as it is.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _cache_dir = tempfile.mkdtemp(prefix="vpntk-tests-xla-cache-")
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def host_devices_env(count: int) -> dict:
  """os.environ for a subprocess that sees `count` CPU devices (keeping the other flags)."""
  # A device count the caller's XLA_FLAGS already sets is replaced, not repeated.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count=")]
  flags.append(f"--xla_force_host_platform_device_count={count}")
  return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")


# Fixtures several test modules share (public models pretrained once per session).
from public_fixtures import digits, private_npz, public_generator, tiny_public  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import



# --- pytest-xdist: `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder` ---
# Each test file runs whole on one worker, so its module fixtures (a finished
# run, a trained classifier) are built once. The files start longest first, the
# rest in their usual order, so that no long file starts last and runs alone
# at the end (--no-loadscope-reorder keeps this order; xdist's own puts the
# files with the most tests first). A file missing from this list only starts
# later; these take ~60-150 s each on the 2-core CPU. (--dist loadgroup cannot
# split test_notebooks.py: with pytest 9.2 xdist 3.8 ignores xdist_group.)
_LONGEST_FIRST = (
    "test_notebooks.py", "test_distributed.py", "test_diffusion_methods.py", "test_benchmarks.py",
    "test_textual_inversion.py", "test_pipeline.py",
    "test_experiment_configs.py",
    "test_prompt.py", "test_sharding.py", "test_models.py", "test_vpntk_method.py",
    "test_public_models.py", "test_vgg.py", "test_vgg16.py", "test_reference_digests.py",
    "test_diffusion.py",
    "test_dp_sgd.py",
)


def pytest_collection_modifyitems(config, items):
  if not hasattr(config, "workerinput"):  # only in an xdist worker
    return
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  # sorted() is stable: the tests of a file keep their order.
  items[:] = sorted(items, key=lambda item: rank.get(item.path.name, len(rank)))
