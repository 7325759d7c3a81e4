"""Downstream evaluation: classifiers trained on synthetic images, tested on real ones."""

from vpntk_jax.blocks import DEFAULT_CLASSIFIERS
from vpntk_jax.evaluation.protocol import CLASSIFIERS, balanced_subsample, evaluate_synthetic

__all__ = ["CLASSIFIERS", "DEFAULT_CLASSIFIERS", "balanced_subsample", "evaluate_synthetic"]
