"""Methods as registered recipes: one module per method, looked up by name.

`get("vp-ntk")` imports `vpntk_jax.methods.vp_ntk` and returns its `METHOD`
(see `base.Method`). A new method is a new module here defining `METHOD`
with its own config block; nothing outside this package names a method.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil

from vpntk_jax.errors import ConfigError
from vpntk_jax.methods.base import Method

_NOT_METHODS = frozenset({"base"})


def _module_name(name: str) -> str:
  return name.replace("-", "_")


@functools.cache
def names() -> tuple[str, ...]:
  """Every registered method's name, sorted."""
  modules = [m.name for m in pkgutil.iter_modules(__path__)
             if m.name not in _NOT_METHODS and not m.name.startswith("_")]
  return tuple(sorted(get(m.replace("_", "-")).name for m in modules))


def unknown_method(name: object) -> str:
  """The error for a method name no method has: the closest name, when one is close."""
  close = difflib.get_close_matches(name, names(), n=1) if isinstance(name, str) else []
  hint = f"; did you mean {close[0]!r}?" if close else ""
  return f"unknown method {name!r}{hint} (available: {', '.join(names())})"


@functools.cache
def get(name: str) -> Method:
  """The method called `name`; ConfigError naming the choices if there is none."""
  if not isinstance(name, str) or _module_name(name) in _NOT_METHODS or not name:
    raise ConfigError(unknown_method(name))
  try:
    module = importlib.import_module(f"{__name__}.{_module_name(name)}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{_module_name(name)}":
      raise
    raise ConfigError(unknown_method(name)) from None
  method = module.METHOD
  if method.name != name:
    raise ConfigError(unknown_method(name))
  return method


@functools.cache
def legacy_fields() -> frozenset:
  """Every field of the flat config layout that some method's block took over."""
  return frozenset(k for m in names() for k in get(m).legacy_fields)


__all__ = ["Method", "get", "legacy_fields", "names"]
