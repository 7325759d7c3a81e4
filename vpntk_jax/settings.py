"""Settings declared once: a config field's flag, help and stage are its metadata.

A field of a config dataclass (RunConfig, the blocks, a method's Options) that
`vpntk synthesize` takes as a flag is declared with `setting(default, help,
flag=..., stage=...)`; the command line, its help (the default shown is the
field's own), docs/cli.md and `--config.FIELD=VALUE` all read that one field.
A field without a flag is still set with `--config.FIELD=VALUE`. JAX-free: the
parser is built from it for `vpntk --help`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Iterator

from vpntk_jax import config_files

# The stages a shared setting belongs to, in the order `--help` lists them.
STAGES = {
    "data": "data: the private set and the real test set",
    "privacy": "privacy: the release's budget and noise",
    "training": "post-processing: generator training on the release",
    "synthesis": "synthesis",
    "evaluation": "evaluation on the real test set",
    "run": "devices and the run",
}
_METADATA = "setting"


@dataclasses.dataclass(frozen=True)
class Setting:
  """What the command line needs to know of a config field besides its type and default.

  Attributes:
    help: what the setting does; never its default (shown from the field's value).
    flag: "--epsilon"; None: only `--config.FIELD=VALUE` sets it.
    stage: a STAGES key (shared settings; a method's own are grouped by method).
    aliases: older spellings of the flag, still accepted, not shown.
    metavar, choices: as argparse takes them; choices may be a function returning
      them, called when the parser is built (the registered methods).
    parse: str -> value where the field's declared type does not say it.
    none: what a default of None means ("all", "as stored"), shown as the default.
  """
  help: str
  flag: str | None = None
  stage: str | None = None
  aliases: tuple[str, ...] = ()
  metavar: str | None = None
  choices: tuple | Callable[[], tuple] | None = None
  parse: Callable[[str], Any] | None = None
  none: str | None = None


def setting(default: Any, help: str, **kwargs) -> Any:  # pylint: disable=redefined-builtin
  """A dataclass field with this default and a Setting (see its attributes)."""
  return dataclasses.field(default=default, metadata={_METADATA: Setting(help, **kwargs)})


@dataclasses.dataclass(frozen=True)
class Declared:
  """A declared field of a config instance: where it sits and what it holds."""
  path: str          # dotted, from the instance walked: "train.steps"
  setting: Setting
  value: Any         # the instance's value: the default where the instance is a default
  type: Any          # the field's declared type


def declared(config: Any, prefix: str = "") -> Iterator[Declared]:
  """Every declared field of a config dataclass instance, nested blocks included.

  The values are the instance's, so a block a method declares with other defaults
  (dpsgd-ti's dp_sgd) shows its own."""
  hints = config_files.type_hints(type(config))
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if _METADATA in f.metadata:
      yield Declared(prefix + f.name, f.metadata[_METADATA], value, hints.get(f.name))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
      yield from declared(value, f"{prefix}{f.name}.")


def flagged(config: Any, prefix: str = "") -> list[Declared]:
  return [d for d in declared(config, prefix) if d.setting.flag]


def shown_default(d: Declared) -> str | None:
  """The default as help shows it; None where there is nothing to show."""
  value = d.value
  if isinstance(value, bool):
    return None  # the flag switches it: its help says to what
  if value is None:
    return d.setting.none
  if isinstance(value, float):
    return f"{value:g}"
  if isinstance(value, (tuple, list)):
    return ",".join(map(str, value))
  return str(value)


def help_text(d: Declared) -> str:
  default = shown_default(d)
  # A value reads "(default 10)", what None means "(default: all)".
  sep = ": " if d.value is None else " "
  text = d.setting.help if default is None else f"{d.setting.help} (default{sep}{default})"
  return text.replace("%", "%%")  # argparse formats help with %


class _Parse:
  """argparse `type`: the command-line string read as the field's declared type."""

  def __init__(self, tp: Any):
    self.tp = tp
    self.__name__ = config_files.type_name(tp)

  def __call__(self, text: str) -> Any:
    return config_files.coerce(text, self.tp)


def add_flag(group, d: Declared, dest: str, *, shown: bool = True) -> argparse.Action:
  """Adds d's flag (and its hidden aliases) to an argparse group; its value lands in
  `dest`, None when not given (so it overrides a config file only when given)."""
  s = d.setting
  kwargs: dict[str, Any] = dict(dest=dest, default=None,
                                help=help_text(d) if shown else argparse.SUPPRESS)
  if isinstance(d.value, bool):
    kwargs.update(action="store_const", const=not d.value)
  else:
    kwargs.update(type=s.parse or _Parse(d.type), metavar=s.metavar or _metavar(d))
    if s.choices is not None:
      kwargs["choices"] = choices(s)
  action = group.add_argument(s.flag, **kwargs)
  for alias in s.aliases:
    group.add_argument(alias, **{**kwargs, "help": argparse.SUPPRESS})
  return action


def choices(s: Setting) -> tuple | None:
  return s.choices() if callable(s.choices) else s.choices


def _metavar(d: Declared) -> str:
  if d.setting.choices is not None:
    return "{" + ",".join(map(str, choices(d.setting))) + "}"
  name = config_files.type_name(d.type)
  if "int" in name and "float" not in name:
    return "N"
  if "float" in name:
    return "X"
  return d.path.rsplit(".", 1)[-1].upper()


def reference(config: Any, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
  """Markdown lines listing every field of `config`, nested blocks included (fields
  in `skip` left out): its --config name, and the flag, help and default declared;
  a field without a flag is set only as --config.FIELD=VALUE."""
  lines = []
  hints = config_files.type_hints(type(config))
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if f.name in skip:
      continue
    if _METADATA not in f.metadata and dataclasses.is_dataclass(value):
      lines += reference(value, f"{prefix}{f.name}.")
      continue
    if _METADATA not in f.metadata:
      lines.append(f"- `--config.{prefix}{f.name}` = `{value!r}`")
      continue
    d = Declared(prefix + f.name, f.metadata[_METADATA], value, hints.get(f.name))
    flag = f" `{d.setting.flag}`" if d.setting.flag else ""
    lines.append(f"- `--config.{d.path}`{flag}: {help_text(d).replace('%%', '%')}")
  return lines
