"""Experiment config files plus `--config.a.b=value` command-line overrides.

The Flax-examples / big_vision convention: one Python file per experiment with
`get_config()` returning the (frozen dataclass) config, and dotted overrides
that reach any nested field:

    vpntk synthesize --config experiments/fashion_dpntk.py \
        --config.epsilon=10 --config.train.steps 500 --config.noise_seed=none

Override values are strings; each is coerced by the declared type of the field
it sets, so a typo fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import itertools
import json
import math
import os
import sys
import types
import typing
from typing import Any, Callable, Mapping

from vpntk_jax.errors import ConfigError

OVERRIDE_PREFIX = "--config."
_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})
_NONE = frozenset({"none", "null"})
# Each load gets a fresh module: loading the same file twice must re-run it.
_module_counter = itertools.count()


def load_config_file(path: str, expected_type: type) -> Any:
  """Runs a Python config file and returns its `get_config()`.

  Args:
    path: Path of a `.py` file defining `get_config()`.
    expected_type: Class the result must be an instance of.

  Returns:
    The config the file's `get_config()` returns.

  Raises:
    ConfigError: The file is missing or not Python, fails to import, has no
      `get_config`, `get_config()` fails, or returns another type.
  """
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  name = f"_vpntk_config_file_{next(_module_counter)}"
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ConfigError(f"config file {path} is not a Python (.py) file")
  module = importlib.util.module_from_spec(spec)
  # Registered while it runs so dataclasses (and get_type_hints) defined in the file work.
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except Exception as e:
    sys.modules.pop(name, None)
    raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path} has no get_config() function")
  try:
    config = get_config()
  except Exception as e:
    raise ConfigError(f"get_config() in {path} failed: {type(e).__name__}: {e}") from e
  if not isinstance(config, expected_type):
    raise ConfigError(f"get_config() in {path} returned {type(config).__name__}, "
                      f"expected {expected_type.__name__}")
  return config


def parse_overrides(args: list[str], prefix: str = OVERRIDE_PREFIX
                    ) -> tuple[dict[str, str], list[str]]:
  """Pulls `--config.a.b=value` and `--config.a.b value` out of an argv list.

  Args:
    args: Command-line arguments (without the program name).
    prefix: Flag prefix that marks an override.

  Returns:
    ({"a.b": "value", ...}, the other arguments in their order). A repeated key
    keeps its last value; everything after a bare `--` is left alone.

  Raises:
    ConfigError: An override has an empty key or no value.
  """
  overrides, rest = {}, []
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--":
      rest.extend(args[i:])
      break
    if not arg.startswith(prefix):
      rest.append(arg)
      i += 1
      continue
    key, eq, value = arg[len(prefix):].partition("=")
    if not key:
      raise ConfigError(f"override {arg!r} has no field name (use {prefix}name=value)")
    if not eq:
      # A following flag is a forgotten value, not a value that starts with "--".
      if i + 1 >= len(args) or args[i + 1].startswith("--"):
        raise ConfigError(f"override {prefix}{key} has no value")
      value = args[i + 1]
      i += 1
    overrides[key] = value
    i += 1
  return overrides, rest


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
  """Returns a copy of a (frozen, possibly nested) dataclass with dotted overrides.

  String values are coerced by the field's declared type; other values are
  assigned as given. All changes to one nested dataclass go into a single
  `dataclasses.replace`, so `__post_init__` checks see them together.

  Args:
    config: A dataclass instance; it is not modified.
    overrides: {"epsilon": "10", "train.steps": "500", ...}.

  Returns:
    A new instance of the same class.

  Raises:
    ConfigError: Unknown key, value that does not fit the field's type, a
      nested dataclass set directly, or a value rejected by `__post_init__`.
  """
  if not dataclasses.is_dataclass(config) or isinstance(config, type):
    raise ConfigError(f"overrides need a dataclass instance, got {type(config).__name__}")
  return _apply(config, dict(overrides), prefix="")


def config_from_args(config_path: str | None, overrides: Mapping[str, Any],
                     config_type: type, apply: Callable[[Any, Mapping], Any] | None = None
                     ) -> Any:
  """The config file's config (or `config_type()`) with `overrides` applied.

  Args:
    config_path: Experiment config file, or None for the defaults.
    overrides: Dotted overrides, as from `parse_overrides`.
    config_type: The config class: the file must return one; its defaults otherwise.
    apply: How overrides are applied (default `apply_overrides`).
  """
  base = load_config_file(config_path, config_type) if config_path else config_type()
  return (apply or apply_overrides)(base, overrides)


def _apply(obj: Any, overrides: dict[str, Any], prefix: str) -> Any:
  """Applies overrides relative to `obj`; `prefix` is its dotted path, for messages."""
  fields = sorted(f.name for f in dataclasses.fields(obj) if f.init)
  hints = type_hints(type(obj))
  leaves, nested = {}, {}
  for key, value in overrides.items():
    head, dot, tail = key.partition(".")
    if head not in fields:
      raise ConfigError(_unknown_key_message(prefix, head, fields))
    if dot:
      nested.setdefault(head, {})[tail] = value
    else:
      leaves[head] = value
  changes = {}
  for name, sub in nested.items():
    changes[name] = _apply(_nested_child(obj, name, leaves, prefix), sub, f"{prefix}{name}.")
  for name, value in leaves.items():
    changes[name] = _leaf_value(value, hints.get(name), prefix + name)
  try:
    return dataclasses.replace(obj, **changes)
  except (TypeError, ValueError) as e:
    keys = ", ".join(prefix + k for k in overrides)
    raise ConfigError(f"invalid value for config key {keys}: {e}") from None


def _nested_child(obj: Any, name: str, leaves: dict, prefix: str) -> Any:
  """The nested dataclass `obj.name` that dotted keys below `name` will change."""
  if name in leaves:
    raise ConfigError(f"config key {prefix}{name} is set both whole and field by field")
  child = getattr(obj, name)
  if child is None:
    raise ConfigError(f"config key {prefix}{name} is None; give it a value in the config "
                      "file before overriding its fields")
  if not dataclasses.is_dataclass(child):
    raise ConfigError(f"config key {prefix}{name} is a {type(child).__name__}, "
                      "not a nested config with fields")
  return child


def _leaf_value(value: Any, tp: Any, key: str) -> Any:
  """`value` coerced to the declared type `tp` of config key `key`."""
  if not isinstance(value, str):
    return value
  if tp is None:
    raise ConfigError(f"cannot resolve the declared type of config key {key}")
  if dataclasses.is_dataclass(tp):
    raise ConfigError(f"config key {key} is a nested config; set its fields, "
                      f"e.g. --config.{key}.<field>=value")
  try:
    return coerce(value, tp)
  except ValueError as e:
    raise ConfigError(f"config key {key}: cannot use {value!r} as {type_name(tp)} ({e})") from None


def type_hints(cls: type) -> dict[str, Any]:
  """Declared field types with string annotations resolved.

  `get_type_hints` on a class evaluates each base's annotations in that base's
  own module globals, which is what `from __future__ import annotations` needs.
  """
  try:
    return typing.get_type_hints(cls)
  except Exception:  # pylint: disable=broad-except
    # One unresolvable annotation must not block overrides of the other fields.
    globalns = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
    hints = {}
    for f in dataclasses.fields(cls):
      try:
        hints[f.name] = eval(f.type, globalns) if isinstance(f.type, str) else f.type  # pylint: disable=eval-used
      except Exception:  # pylint: disable=broad-except
        pass
    return hints


def coerce(text: str, tp: Any) -> Any:
  """Converts a command-line string to a value of type `tp`.

  Raises:
    ValueError: `text` does not fit `tp`, or `tp` cannot come from a string.
  """
  origin, args = typing.get_origin(tp), typing.get_args(tp)
  if tp is Any:
    return text
  if origin in (typing.Union, types.UnionType):
    return _coerce_union(text, args)
  if origin is typing.Literal:
    for option in args:
      if text == str(option) or (isinstance(option, str) and text.lower() == option.lower()):
        return option
    raise ValueError(f"expected one of {', '.join(map(repr, args))}")
  if tp is bool:
    return _coerce_bool(text)
  if tp is int:
    return _coerce_int(text)
  if tp is float:
    return _coerce_float(text)
  if tp is str:
    return text
  if tp in (tuple, list) or origin in (tuple, list):
    return _coerce_sequence(text, origin or tp, args)
  if dataclasses.is_dataclass(tp):
    raise ValueError("a nested config cannot be set from a string; set its fields")
  raise ValueError(f"fields of type {type_name(tp)} cannot be set from the command line")


def _coerce_union(text: str, args: tuple) -> Any:
  if type(None) in args and text.strip().lower() in _NONE:
    return None
  errors = []
  for arg in args:
    if arg is type(None):
      continue
    try:
      return coerce(text, arg)
    except ValueError as e:
      errors.append(str(e))
  raise ValueError("; ".join(errors) or "expected none")


def _coerce_bool(text: str) -> bool:
  word = text.strip().lower()
  if word in _TRUE:
    return True
  if word in _FALSE:
    return False
  raise ValueError("expected true/false, yes/no or 1/0")


def _coerce_int(text: str) -> int:
  try:
    return int(text.strip())
  except ValueError:
    pass
  # "1e4" steps: accept floats with an exact integer value, nothing else.
  try:
    number = float(text.strip())
  except ValueError:
    number = math.nan
  if not number.is_integer():
    raise ValueError("expected an integer")
  return int(number)


def _coerce_float(text: str) -> float:
  try:
    return float(text.strip())
  except ValueError:
    raise ValueError("expected a number") from None


def _coerce_sequence(text: str, kind: type, args: tuple) -> tuple | list:
  """A comma-separated or JSON list, each element coerced by the element type."""
  stripped = text.strip()
  from_json = stripped.startswith("[")
  if from_json:
    try:
      items = json.loads(stripped)
    except json.JSONDecodeError as e:
      raise ValueError(f"invalid JSON list: {e}") from None
    items = [_json_item(x) for x in items]
  else:
    items = [s.strip() for s in stripped.split(",")] if stripped else []
  if kind is tuple and len(args) == 2 and args[1] is Ellipsis:
    element_types = [args[0]] * len(items)
  elif kind is tuple and args:
    if len(args) != len(items):
      raise ValueError(f"expected {len(args)} elements, got {len(items)}")
    element_types = list(args)
  elif kind is list and args:
    element_types = [args[0]] * len(items)
  else:
    element_types = [None] * len(items)
  element = _json_element if from_json else _text_element
  values = [element(x, t) for x, t in zip(items, element_types)]
  return tuple(values) if kind is tuple else values


def _json_item(x: Any) -> Any:
  return tuple(_json_item(y) for y in x) if isinstance(x, list) else x


def _text_element(text: str, tp: Any) -> Any:
  return _guess_scalar(text) if tp is None else coerce(text, tp)


def _json_element(x: Any, tp: Any) -> Any:
  """A JSON-typed element, checked against the declared element type (if any)."""
  if tp in (None, Any):
    return x
  if isinstance(x, str):
    return coerce(x, tp)
  if tp is float and isinstance(x, int) and not isinstance(x, bool):
    return float(x)
  # bool is an int subclass, but true is not a layer width.
  if isinstance(tp, type) and isinstance(x, tp) and (tp is bool or not isinstance(x, bool)):
    return x
  raise ValueError(f"element {x!r} is not {type_name(tp)}")


def _guess_scalar(text: str) -> int | float | str:
  """An untyped element: int if it parses as one, else float, else the string."""
  for convert in (int, float):
    try:
      return convert(text)
    except ValueError:
      pass
  return text


def type_name(tp: Any) -> str:
  return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp)


def _unknown_key_message(prefix: str, name: str, valid: list[str]) -> str:
  close = difflib.get_close_matches(name, valid, n=3)
  if close:
    hint = "did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"
  else:
    hint = "valid keys here: " + ", ".join(prefix + v for v in valid)
  return f"unknown config key {prefix + name!r}; {hint}"
