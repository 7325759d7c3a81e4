"""Settings for the whole test session. CI speed only: the same computations (float
rounding aside)."""

import os

# On the tests' tiny shapes XLA's CPU backend optimisations cost more compile
# time than they save (test_pipeline.py: 19% less CPU time without them). Set
# before any test imports jax; subprocesses inherit it through os.environ.
_NO_BACKEND_OPT = "--xla_backend_optimization_level=0"
if _NO_BACKEND_OPT not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _NO_BACKEND_OPT).strip()


def host_devices_env(count: int) -> dict:
  """os.environ for a subprocess that sees `count` CPU devices (keeping the other flags)."""
  # A device count the caller's XLA_FLAGS already sets is replaced, not repeated.
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count=")]
  flags.append(f"--xla_force_host_platform_device_count={count}")
  return dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")


# Fixtures several test modules share (public models pretrained once per session).
from public_fixtures import private_npz, public_generator, tiny_public  # noqa: E402,F401  pylint: disable=wrong-import-position,unused-import
