"""Experiment config files and `--config.a.b=value` overrides."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Literal

import pytest

from vpntk_jax import config_files
from vpntk_jax.config import RunConfig
from vpntk_jax.errors import ConfigError
from vpntk_jax.blocks import TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = os.path.join(REPO, "experiments", "fashion_dpntk.py")


@dataclasses.dataclass(frozen=True)
class Inner:
  """A nested level below `Middle`, to check any depth."""
  width: int = 4
  gain: float = 1.0


@dataclasses.dataclass(frozen=True)
class Middle:
  inner: Inner = Inner()
  name: str = "m"


@dataclasses.dataclass(frozen=True)
class Toy:
  """Every supported field type, annotated as strings (future annotations)."""
  flag: bool = False
  count: int = 1
  rate: float = 0.5
  label: str | None = "x"
  layers: tuple = (8, "relu")
  sizes: tuple[int, ...] = (1, 2)
  pair: tuple[int, str] = (1, "a")
  names: list[str] = dataclasses.field(default_factory=list)
  mode: Literal["fast", "slow"] = "fast"
  middle: Middle = Middle()
  maybe: Middle | None = None

  def __post_init__(self):
    if self.count < 0:
      raise ValueError("count must be non-negative")


def _write(tmp_path, text: str, name: str = "cfg.py") -> str:
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return str(path)


# load_config_file

def test_loads_the_fashion_experiment():
  config = config_files.load_config_file(FASHION, RunConfig)
  assert isinstance(config, RunConfig)
  assert (config.method, config.data.source, config.epsilon) == ("dp-ntk", "fashion_mnist", 1.0)


def test_loads_a_temp_file_fresh_each_time(tmp_path):
  path = _write(tmp_path, """
      from vpntk_jax.config import RunConfig
      def get_config():
        return RunConfig(epsilon=3.0, ntk_layers=(16, "relu", 2))
      """)
  first = config_files.load_config_file(path, RunConfig)
  assert first.epsilon == 3.0 and first.ntk_layers == (16, "relu", 2)
  _write(tmp_path, """
      from vpntk_jax.config import RunConfig
      def get_config():
        return RunConfig(epsilon=4.0)
      """)
  assert config_files.load_config_file(path, RunConfig).epsilon == 4.0


def test_file_may_define_its_own_dataclass(tmp_path):
  path = _write(tmp_path, """
      from __future__ import annotations
      import dataclasses
      @dataclasses.dataclass(frozen=True)
      class Local:
        steps: int | None = 3
      def get_config():
        return Local()
      """)
  config = config_files.load_config_file(path, expected_type=object)
  assert config_files.apply_overrides(config, {"steps": "none"}).steps is None


def test_expected_type_is_checked(tmp_path):
  path = _write(tmp_path, "def get_config():\n  return {'epsilon': 1}\n")
  with pytest.raises(ConfigError, match="returned dict, expected RunConfig"):
    config_files.load_config_file(path, RunConfig)
  assert config_files.load_config_file(path, expected_type=dict) == {"epsilon": 1}


@pytest.mark.parametrize("text, match", [
    ("x = 1\n", "has no get_config"),
    ("import no_such_module_xyz\n", "failed to load: ModuleNotFoundError: .*no_such_module_xyz"),
    ("def get_config(:\n", "failed to load: SyntaxError"),
    ("def get_config():\n  raise ValueError('bad epsilon')\n", "get_config.*failed: ValueError: bad epsilon"),
])
def test_load_errors(tmp_path, text, match):
  with pytest.raises(ConfigError, match=match):
    config_files.load_config_file(_write(tmp_path, text), RunConfig)


def test_missing_and_non_python_files(tmp_path):
  with pytest.raises(ConfigError, match="not found"):
    config_files.load_config_file(str(tmp_path / "nope.py"), RunConfig)
  with pytest.raises(ConfigError, match="not a Python"):
    config_files.load_config_file(_write(tmp_path, "{}", name="cfg.json"), RunConfig)


# parse_overrides

def test_parse_overrides_on_mixed_argv():
  argv = ["synthesize", "--config", "exp.py", "--config.epsilon=10", "--out", "runs/x",
          "--config.train.steps", "500", "--config.ntk_layers=800,relu,10", "--force",
          "--config.epsilon=2", "--", "--config.seed=1"]
  overrides, rest = config_files.parse_overrides(argv)
  assert overrides == {"epsilon": "2", "train.steps": "500", "ntk_layers": "800,relu,10"}
  assert rest == ["synthesize", "--config", "exp.py", "--out", "runs/x", "--force",
                  "--", "--config.seed=1"]


def test_parse_overrides_keeps_values_with_equals_and_negatives():
  overrides, rest = config_files.parse_overrides(["--config.data=a=b.npz", "--config.seed", "-1"])
  assert overrides == {"data": "a=b.npz", "seed": "-1"} and rest == []


@pytest.mark.parametrize("argv, match", [
    (["--config.epsilon"], "no value"),
    (["--config.epsilon", "--force"], "no value"),
    (["--config.=3"], "no field name"),
])
def test_parse_overrides_errors(argv, match):
  with pytest.raises(ConfigError, match=match):
    config_files.parse_overrides(argv)


# apply_overrides on RunConfig

def test_run_config_overrides_and_original_unchanged():
  base = RunConfig(noise_seed=7)
  config = config_files.apply_overrides(base, {
      "train.steps": "10", "train.learning_rate": "3e-3", "noise_seed": "none",
      "ntk_layers": "800, relu,layernorm,10", "epsilon": "1e1", "data.download": "Yes",
      "classifiers": '["mlp"]', "data.data_dir": "null"})
  assert config.train == dataclasses.replace(TrainConfig(), steps=10, learning_rate=3e-3)
  assert config.noise_seed is None and config.data.data_dir is None
  assert config.ntk_layers == (800, "relu", "layernorm", 10)
  assert config.epsilon == 10.0 and isinstance(config.epsilon, float)
  assert config.data.download is True and config.classifiers == ("mlp",)
  assert base == RunConfig(noise_seed=7)  # frozen original untouched
  assert base.train is RunConfig().train


def test_run_config_errors():
  base = RunConfig()
  with pytest.raises(ConfigError, match=r"'train.stpes'; did you mean 'train.steps'"):
    config_files.apply_overrides(base, {"train.stpes": "1"})
  with pytest.raises(ConfigError, match="valid keys here: accountant, adjacency"):
    config_files.apply_overrides(base, {"zzz": "1"})
  with pytest.raises(ConfigError, match="train is a nested config"):
    config_files.apply_overrides(base, {"train": "x"})
  with pytest.raises(ConfigError, match="epsilon is a float, not a nested config"):
    config_files.apply_overrides(base, {"epsilon.x": "1"})
  with pytest.raises(ConfigError, match="config key train.steps.*steps >= 0"):
    config_files.apply_overrides(base, {"train.steps": "-1"})
  with pytest.raises(ConfigError, match=r"noise_seed: cannot use '1.5' as int \| None"):
    config_files.apply_overrides(base, {"noise_seed": "1.5"})


# apply_overrides on a local dataclass: every coercion

@pytest.mark.parametrize("key, text, expected", [
    ("flag", "TRUE", True), ("flag", "no", False), ("flag", "1", True), ("flag", "off", False),
    ("count", "12", 12), ("count", "1e3", 1000), ("count", " 7 ", 7),
    ("rate", "1e-5", 1e-5), ("rate", "2", 2.0),
    ("label", "None", None), ("label", "null", None), ("label", "abc", "abc"),
    ("layers", "800,relu,layernorm,10", (800, "relu", "layernorm", 10)),
    ("layers", "1.5,2", (1.5, 2)), ("layers", "", ()),
    ("layers", '[800, "relu", "10", 0.5]', (800, "relu", "10", 0.5)),
    ("sizes", "3,4,5", (3, 4, 5)), ("sizes", "[3, 4]", (3, 4)),
    ("pair", "2,b", (2, "b")),
    ("names", "a,b", ["a", "b"]),
    ("mode", "slow", "slow"),
    ("maybe", "none", None),
])
def test_coercions(key, text, expected):
  value = getattr(config_files.apply_overrides(Toy(), {key: text}), key)
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key, text, match", [
    ("flag", "maybe", "as bool.*true/false"),
    ("count", "1.5", "as int.*expected an integer"),
    ("count", "abc", "as int"),
    ("rate", "fast", "as float.*expected a number"),
    ("sizes", "1,x", r"as tuple\[int, ...\]"),
    ("sizes", "[1, true]", "element True is not int"),
    ("pair", "1,2,3", "expected 2 elements, got 3"),
    ("layers", "[1, 2", "invalid JSON list"),
    ("mode", "medium", "expected one of 'fast', 'slow'"),
    ("middle", "x", "is a nested config; set its fields"),
    ("maybe", "x", "cannot use 'x'"),
])
def test_coercion_errors_name_key_value_and_type(key, text, match):
  with pytest.raises(ConfigError, match=f"{key}.*{match}"):
    config_files.apply_overrides(Toy(), {key: text})


def test_nested_any_depth_in_one_replace():
  toy = config_files.apply_overrides(
      Toy(), {"middle.inner.width": "16", "middle.inner.gain": "0.25", "middle.name": "n"})
  assert toy.middle == Middle(inner=Inner(width=16, gain=0.25), name="n")
  with pytest.raises(ConfigError, match=r"'middle.inner.wdth'; did you mean 'middle.inner.width'"):
    config_files.apply_overrides(Toy(), {"middle.inner.wdth": "1"})
  with pytest.raises(ConfigError, match="maybe is None"):
    config_files.apply_overrides(Toy(), {"maybe.name": "x"})


def test_post_init_error_names_the_key_and_non_strings_pass_through():
  with pytest.raises(ConfigError, match="config key count: count must be non-negative"):
    config_files.apply_overrides(Toy(), {"count": "-3"})
  assert config_files.apply_overrides(Toy(), {"count": 5, "layers": (1,)}).layers == (1,)
  with pytest.raises(ConfigError, match="dataclass instance"):
    config_files.apply_overrides({"count": 1}, {"count": "2"})


# config_from_args

def test_config_from_args(tmp_path):
  config = config_files.config_from_args(FASHION, {"epsilon": "10", "train.steps": "5"},
                                         RunConfig)
  assert (config.epsilon, config.train.steps, config.data.source) == (10.0, 5, "fashion_mnist")
  assert config_files.config_from_args(None, {}, RunConfig) == RunConfig()
  toy = config_files.config_from_args(None, {"middle.inner.width": "2"}, Toy)
  assert toy.middle.inner.width == 2
