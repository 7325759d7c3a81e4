"""`vpntk synthesize`'s flags are the config fields' declarations (settings.setting):
grouped by stage, each method's shown with --method NAME, defaults and help read
from the fields, old spellings still accepted."""

import argparse
import dataclasses

import pytest

from vpntk_jax import cli
from vpntk_jax import methods
from vpntk_jax import settings
from vpntk_jax.blocks import PretrainConfig
from vpntk_jax.config import RunConfig


def _help(capsys, monkeypatch, *argv, columns=80):
  monkeypatch.setenv("COLUMNS", str(columns))
  with pytest.raises(SystemExit) as done:
    cli.main(["synthesize", *argv, "--help"])
  assert done.value.code == 0
  return capsys.readouterr().out


def test_synthesize_help_is_short_and_grouped_by_stage(capsys, monkeypatch):
  text = _help(capsys, monkeypatch)
  assert len(text.splitlines()) < 100
  titles = [text.index(f"\n{title}:\n") for title in settings.STAGES.values()]
  assert titles == sorted(titles)
  assert "--method NAME --help" in text and "--config.FIELD=VALUE" in text
  # No method's own settings, and no old spelling.
  for flag in ("--kappa", "--top-k", "--dp-sgd-steps", "--rff-features", "--steps "):
    assert flag not in text
  stage_of = {d.setting.flag: d.setting.stage for d in settings.flagged(RunConfig())}
  assert text.index("--epsilon") > text.index("privacy:") > text.index("--image-size")
  assert stage_of["--train-steps"] == "training" and stage_of["--epsilon"] == "privacy"


def test_method_help_adds_the_method_s_own_settings(capsys, monkeypatch):
  text = _help(capsys, monkeypatch, "--method", "privimage")
  own = text[text.index("privimage settings"):]
  for flag in ("--top-k N", "--query-noise X", "--pretrain-steps N", "--dp-sgd-steps N",
               "--clip-norm X", "--public-model DIR", "--public-data SOURCE"):
    assert flag in own
  assert "(default 200)" in own and "--kappa" not in text
  # A block a method declares with its own defaults shows them: dpsgd-ti's DP-SGD.
  text = _help(capsys, monkeypatch, "--method=dpsgd-ti", columns=200)
  assert "DP-SGD steps T (default 100)" in text and "--unet-size" not in text
  assert len(_help(capsys, monkeypatch, "--method", "vp-ntk").splitlines()) < 120


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
  return [a for a in parser._actions  # pylint: disable=protected-access
          if a.dest.startswith((cli._SHARED, cli._OWN))]  # pylint: disable=protected-access


@pytest.mark.parametrize("method", (None,) + methods.names())
def test_every_flag_is_read_from_its_declaration(method):
  synthesize = cli._subcommands(cli._parser(method))["synthesize"]  # pylint: disable=protected-access
  shared = {cli._SHARED + d.path: d for d in settings.flagged(RunConfig())}  # pylint: disable=protected-access
  own = {cli._OWN + d.setting.flag: d  # pylint: disable=protected-access
         for d in settings.flagged(methods.get(method).options())} if method else {}
  actions = _actions(synthesize)
  assert {a.dest for a in actions} >= set(shared) | set(own)
  for action in actions:
    # Not given means not set: a config file's value stays.
    assert action.default is None, action.option_strings
    d = shared.get(action.dest) or own.get(action.dest)
    if d is None:  # another method's flag: parsed (to name its method), not shown
      assert action.help == argparse.SUPPRESS, action.option_strings
      continue
    if action.option_strings[0] != d.setting.flag:  # an old spelling
      assert action.option_strings[0] in d.setting.aliases
      assert action.help == argparse.SUPPRESS
      continue
    assert action.help == settings.help_text(d), d.path
    shown = settings.shown_default(d)
    assert shown is None or f"{shown}" in action.help % {}
    if isinstance(d.value, bool):
      assert action.const is (not d.value)


def test_no_declared_help_types_its_default():
  declared = list(settings.declared(RunConfig()))
  for name in methods.names():
    declared += list(settings.declared(methods.get(name).options(), "options."))
  assert declared
  for d in declared:
    assert "default" not in d.setting.help, d.path
    assert d.setting.stage in (None, *settings.STAGES), d.path


def test_flags_and_old_spellings_set_the_declared_fields(tmp_path):
  args = cli._parser("dpdm").parse_args([  # pylint: disable=protected-access
      "synthesize", "--out", str(tmp_path), "--method", "dpdm", "--steps", "7", "--lr", "0.5",
      "--dp-steps", "3", "--sample-steps", "4", "--pretrain-steps", "0", "--classes", "0,1",
      "--test-data", "none", "--skip-evaluation", "--pretrain-conditional"])
  config = cli._run_config(args, cli._shared_overrides(args))  # pylint: disable=protected-access
  assert config.train.steps == 7 and config.train.learning_rate == 0.5
  assert (config.options.dp_sgd.steps, config.options.model.sample_steps) == (3, 4)
  assert config.options.pretrain.steps == 0 and config.options.pretrain_conditional
  assert config.data.classes == ("0", "1") and not config.data.has_test_set
  assert config.evaluate is False
  new = cli._parser("dpdm").parse_args([  # pylint: disable=protected-access
      "synthesize", "--out", str(tmp_path), "--method", "dpdm", "--train-steps", "7",
      "--dp-sgd-steps", "3", "--synthesis-steps", "4"])
  assert cli._method_overrides(new, "dpdm") == {  # pylint: disable=protected-access
      "options.dp_sgd.steps": 3, "options.model.sample_steps": 4}
  assert cli._shared_overrides(new)["train.steps"] == 7  # pylint: disable=protected-access


def test_a_bad_value_is_refused_naming_the_flag(capsys):
  with pytest.raises(SystemExit) as done:
    cli.main(["synthesize", "--out", "x", "--epsilon", "lots"])
  assert done.value.code == 2
  assert "--epsilon: invalid float value: 'lots'" in capsys.readouterr().err


def test_every_pretrain_flag_is_read_from_its_declaration():
  pretrain = cli._subcommands(cli._parser())["pretrain"]  # pylint: disable=protected-access
  declared = {cli._SHARED + d.path: d  # pylint: disable=protected-access
              for d in settings.flagged(PretrainConfig())
              if d.path in cli._PRETRAIN_SETTINGS}  # pylint: disable=protected-access
  actions = _actions(pretrain)
  assert {a.dest for a in actions} == set(declared)
  for action in actions:
    assert action.default is None, action.option_strings
    d = declared[action.dest]
    if action.option_strings[0] != d.setting.flag:  # an old spelling
      assert action.option_strings[0] in d.setting.aliases
      assert action.help == argparse.SUPPRESS
      continue
    # Public data's wording may replace a DataConfig help; never its default.
    wording = cli._PUBLIC_WORDING.get(d.path, {})  # pylint: disable=protected-access
    assert "default" not in wording.get("help", "")
    worded = dataclasses.replace(d, setting=dataclasses.replace(d.setting, **wording))
    assert action.help == settings.help_text(worded), d.path
    shown = settings.shown_default(worded)
    assert shown is None or f"{shown}" in action.help % {}
    if isinstance(d.value, bool):
      assert action.const is (not d.value)
  for d in settings.declared(PretrainConfig()):
    assert "default" not in d.setting.help, d.path


def test_pretrain_s_flags_and_old_spellings_set_its_fields(tmp_path):
  args = cli._parser().parse_args([  # pylint: disable=protected-access
      "pretrain", "--out", str(tmp_path), "--data", "mnist", "--data-dir", "d", "--download",
      "--image-size", "16", "--classes", "a,b", "--seed", "3", "--extractor-epochs", "2",
      "--steps", "7", "--batch-size", "9", "--extractor-only", "--devices", "2"])
  assert cli._shared_overrides(args) == {  # pylint: disable=protected-access
      "data.source": "mnist", "data.data_dir": "d", "data.download": True,
      "data.image_size": 16, "data.classes": ("a", "b"), "seed": 3, "extractor_epochs": 2,
      "train.steps": 7, "train.batch_size": 9, "generator": False, "devices": 2}
  args = cli._parser().parse_args(  # pylint: disable=protected-access
      ["pretrain", "--out", str(tmp_path), "--train-steps", "5"])
  overrides = cli._shared_overrides(args)  # pylint: disable=protected-access
  assert overrides["train.steps"] == 5 and overrides["generator"] is None
