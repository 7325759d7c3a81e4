"""Flax models: the conditional generators trained against a released embedding."""
