"""Running one experiment cell so that an interrupted script can simply be rerun."""

import os

from vpntk_jax.config import RunConfig
from vpntk_jax.pipeline import run_synthesis
from vpntk_jax.run_files import RELEASE


def run_or_resume(config: RunConfig, out: str) -> dict:
  """`run_synthesis` into `out`, resuming (reusing its stored release) where one exists."""
  resume = os.path.exists(os.path.join(out, RELEASE))
  return run_synthesis(config, out, resume=resume, quiet=True)
