"""What the run orchestrator (`pipeline.run_synthesis`) asks of a method's recipe.

In order:
  preflight(private, config)         checks that need the private set's public
                                     facts (its size under replace-one); runs
                                     before anything is written
  release_arrays(config)             ledger name -> release.npz array name
  private_statistic(private, ...)    the exact statistic the one-shot releases
                                     add noise to (never stored)
  release(statistic, private, ...)   the one-shot releases and their ledger
                                     (once; reused on resume)
  post_process(release, ...)         training on the release and public data
                                     only, any number of steps
  train_on_private(state, private, ...)
                                     many-step mechanisms (DP-SGD) that charge
                                     the ledger as they go
  sampler                            what synthesis samples from the final state
  abstract_state(config, classes)    the shapes of that final state, so preflight
                                     can build synthesis before anything is spent

The one-release family (`stages.mean_embedding`) has no many-step mechanism;
the diffusion family (`stages.diffusion_recipe`) has both kinds.
"""

from __future__ import annotations

from vpntk_jax.errors import ConfigError
from vpntk_jax.privacy.plan import new_ledger


class Recipe:
  """Defaults for the stages a recipe may not have."""

  def preflight(self, private, config, *, mesh=None) -> None:
    """Nothing to check beyond the config's own validation."""
    del private, config, mesh

  def check_auditable(self, config) -> None:
    """`vpntk audit` re-runs a one-release mean embedding (the recipe's `features`) on
    neighbouring sets; a recipe without one cannot be audited."""
    raise ConfigError(f"vpntk audit audits one-release mean embeddings; {config.method} "
                      f"releases through DP-SGD, whose accounting it does not test")

  def release_arrays(self, config) -> dict[str, str]:
    """No one-shot release."""
    del config
    return {}

  def private_statistic(self, private, config, *, mesh=None, quiet=False):
    """No one-shot release: no statistic."""
    del private, config, mesh, quiet

  def release(self, statistic, private, config, *, prior=None, quiet=False,
              show_private=False):
    """No one-shot release: the run's empty ledger (still charging `prior`'s records)."""
    del statistic, private, quiet, show_private
    return {}, new_ledger(config, prior)

  def abstract_state(self, config, num_classes: int):
    """The TrainState post-processing returns, as shapes (jax.ShapeDtypeStruct)."""
    raise NotImplementedError

  def train_on_private(self, state, private, config, run, *, ledger, charge, mesh=None,
                       quiet=False):
    """No many-step mechanism: the state is the post-processing's."""
    del private, config, run, ledger, charge, mesh, quiet
    return state
