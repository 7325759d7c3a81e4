"""A small DP-NTK config for tests: narrow NTK network, tiny generator run."""

from vpntk_jax.config import RunConfig


def get_config() -> RunConfig:
  return RunConfig(ntk_layers=(64, "relu", "layernorm", 10))
