"""Lets neural-tangents 0.6.5 (its last release) import on current JAX.

Import this module before `neural_tangents`; `vpntk_jax.features.ntk` does. It
only *adds* names that newer JAX removed; it changes nothing JAX still has.

What 0.6.5 needs and current JAX lacks:
* `jax.core.{Jaxpr, JaxprEqn, Literal, Var, Primitive, ...}`: moved to
  `jax.extend.core` (public) or only kept in `jax._src.core`.
* the module `jax.util` (`safe_map`, `safe_zip`): removed; same functions live
  in `jax._src.util`.
* `jax.interpreters.ad.zeros_like_p`: removed. neural-tangents only uses it as
  a dictionary key for its structured-derivative rules (implementation 3), so a
  placeholder primitive that nothing ever binds is enough.
* `neural_tangents.experimental` imports TensorFlow at package import time. We
  register an empty placeholder for it so `import neural_tangents` stays free
  of TensorFlow (the GPU machine has none). Its TF-only tools stay unavailable.
"""

import importlib
import sys
import types

import jax
import jax.core
from jax.interpreters import ad

_CORE_NAMES = ("Jaxpr", "JaxprEqn", "Literal", "ShapedArray", "Value", "Var",
               "AbstractValue", "Primitive", "DShapedArray")


def _patch_core() -> None:
  from jax._src import core as src_core  # pylint: disable=g-import-not-at-top
  for name in _CORE_NAMES:
    if not hasattr(jax.core, name) and hasattr(src_core, name):
      setattr(jax.core, name, getattr(src_core, name))


def _patch_util() -> None:
  try:
    importlib.import_module("jax.util")
    return
  except ImportError:
    pass
  from jax._src import util as src_util  # pylint: disable=g-import-not-at-top
  module = types.ModuleType("jax.util")
  module.safe_map = src_util.safe_map
  module.safe_zip = src_util.safe_zip
  sys.modules["jax.util"] = module
  jax.util = module


def _patch_ad() -> None:
  if not hasattr(ad, "zeros_like_p"):
    ad.zeros_like_p = jax.extend.core.Primitive("zeros_like_placeholder")


def _skip_tf_experimental() -> None:
  name = "neural_tangents.experimental"
  if name not in sys.modules:
    placeholder = types.ModuleType(name)
    placeholder.__doc__ = "Skipped by vpntk_jax._nt_compat: needs TensorFlow."
    sys.modules[name] = placeholder


def apply() -> None:
  """Installs the shims. Idempotent."""
  importlib.import_module("jax.extend.core")
  _patch_core()
  _patch_util()
  _patch_ad()
  _skip_tf_experimental()


apply()
