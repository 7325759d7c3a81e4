"""The run: data -> private mechanism(s) -> post-processing -> synthesis -> evaluation.

Thin drivers for `vpntk synthesize`, `vpntk evaluate` and `vpntk audit`. The
method (`vpntk_jax.methods`) supplies the recipe; the stages live in
`vpntk_jax.stages`, the run directory in `vpntk_jax.run_dir`, the release
protocol in `vpntk_jax.privacy.plan`. Public models are loaded once per run and
the device mesh is built once, then passed along.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import tempfile
import time

import jax
import numpy as np

from vpntk_jax import config as config_lib
from vpntk_jax import distributed
from vpntk_jax import io_utils
from vpntk_jax import protocols
from vpntk_jax import public
from vpntk_jax import report
from vpntk_jax import sharding
from vpntk_jax.blocks import NO_TEST_SET
from vpntk_jax.config import RunConfig
from vpntk_jax.data import (ImageDataset, dpimagebench_split, load_dataset, load_test_source, npy,
                            resize_dataset)
from vpntk_jax.data.schema import Schema, fit_to_schema
from vpntk_jax.errors import ConfigError, DataError, RunDirError
from vpntk_jax.evaluation.protocol import balanced_subsample
from vpntk_jax.features import ntk, ntk_check
from vpntk_jax.features.ntk_map import NTKFeatureMap
from vpntk_jax.privacy import PrivacyLedger, read_ledger, write_ledger
from vpntk_jax.privacy import audit as audit_lib
from vpntk_jax.privacy import diagnostics
from vpntk_jax.run_dir import (check_reusable_release, load_config, load_release, lock,
                               open_run_dir, read_synthetic)
from vpntk_jax.staging import RunDir, staging_path
from vpntk_jax.run_files import (CHECKPOINTS, CONFIG, LOG_TXT, METRICS, PRETRAIN_CHECKPOINTS,
                                 PRIVACY, PUBLIC, RELEASE, SELECTION_CHECKPOINTS, SYNTHETIC)
from vpntk_jax.stages import evaluation, mean_embedding, synthesis
from vpntk_jax.training.checkpoints import check_readable
from vpntk_jax.log import run_log, say


def device_mesh(config: RunConfig):
  """A data mesh when more than one device is used, else None (plain jit).

  In a multi-host job it spans the devices of every process.
  """
  return sharding.device_mesh(config.devices)


def load_public_models(config: RunConfig):
  """The run's public models (None for a method without them), loaded once."""
  if not config.method_spec.needs_public_models:
    return None
  return public.load_public(config.options.public_model)


def build_recipe(config: RunConfig, image_shape, num_classes: int, public_models=None):
  """The method's recipe for data of this shape (public models checked against it)."""
  if public_models is not None:
    public.check_compatible(public_models, tuple(image_shape))
  return config.method_spec.build(config, tuple(image_shape), num_classes, public_models)


def load_private_and_test(config: RunConfig, datasets=None) -> tuple[ImageDataset, ImageDataset]:
  """The private training set and the real test set, from `config.data` or given in memory.

  The test set is public and declares the schema (classes, names, channels,
  size); the private set is fitted to it (`fit_to_schema`), except that a
  memory-mapped one (`data.npy`) must already have the schema's image shape.
  """
  if datasets is not None:
    private, test = datasets
  else:
    private = load_split(config, "train")
    test = load_test_set(config)
  if config.protocol == protocols.DPIMAGEBENCH:
    private, _ = dpimagebench_split.split(private)  # the validation images are never private
  test = resize_dataset(test, config.data.image_size)
  npy.check_used_as_stored(private, test.image_shape, test.name)  # streamed: no copies
  private = fit_to_schema(resize_dataset(private, config.data.image_size), Schema.of(test))
  return private, test


def load_validation_set(config: RunConfig) -> ImageDataset | None:
  """The protocol's validation images (held out of the private data, never trained
  on privately), resized as the test set; None without a protocol that has them."""
  if config.protocol != protocols.DPIMAGEBENCH:
    return None
  _, validation = dpimagebench_split.split(load_split(config, "train"))
  return resize_dataset(validation, config.data.image_size)


def load_test_set(config: RunConfig) -> ImageDataset:
  """The real test set `config.data` names; without one (test_source "none"), an
  empty set carrying the declared schema."""
  data = config.data
  if not data.has_test_set:
    return Schema.declared(data.classes, data.image_size, data.channels).empty_dataset()
  if data.test_source is None:
    return load_split(config, "test")
  return load_test_source(data.test_source, data_dir=data.data_dir, download=data.download,
                          label_attribute=data.label_attribute)


def load_split(config: RunConfig, split: str, **kwargs) -> ImageDataset:
  """One split of `config.data`, as stored (not resized)."""
  data = config.data
  return load_dataset(data.source, split, data_dir=data.data_dir, download=data.download,
                      label_attribute=data.label_attribute, **kwargs)


def describe_public_models(config: RunConfig, models, private: ImageDataset) -> dict:
  """The optional overlap check of the public data against the private data; returns
  the public models' description for the run's public.json."""
  if config.options.check_public_overlap:
    if "pretrain_config" not in models.spec:
      raise ConfigError(f"{config.options.public_model}/public.json does not name the public "
                        f"data its models were trained on (no pretrain_config), so the overlap "
                        f"check cannot run")
    pretrained = public.PretrainConfig.from_json(models.spec["pretrain_config"])
    public_data = resize_dataset(
        load_dataset(pretrained.data.source, "train", data_dir=pretrained.data.data_dir),
        private.image_shape[0])
    public.check_overlap(public_data, private)
  return {"path": os.path.abspath(config.options.public_model), **models.spec,
          "note": "public models: trained on public data only; not covered by, and not "
                  "needing, the privacy guarantee"}


def unused_settings(config: RunConfig) -> list[str]:
  """The shared settings this config sets away from their defaults although its method
  does not read them (`Method.reads_setting`), as dotted field names."""
  default = dataclasses.replace(RunConfig(), method=config.method, options=config.options)
  changed = [f"train.{f.name}" for f in dataclasses.fields(config.train)
             if getattr(config.train, f.name) != getattr(default.train, f.name)]
  changed += [name for name in ("loss", "cosine_weight", "validation_noise_scale")
              if getattr(config, name) != getattr(default, name)]
  return [name for name in changed if not config.method_spec.reads_setting(name)]


def preflight(recipe, private: ImageDataset, test: ImageDataset, config: RunConfig, *,
              mesh=None) -> None:
  """What can fail, checked before anything is drawn or written: every release is
  read by something, the method's own checks (its budget: DP-SGD calibrated, fixed
  noise within epsilon; memory), and synthesis built from shapes alone."""
  unused = unused_settings(config)
  if unused:
    raise ConfigError(f"{config.method} trains no generator, so it would not read "
                      f"{', '.join(unused)} (a validation release would be budget spent for "
                      f"nothing): leave them at their defaults")
  recipe.preflight(private, config, mesh=mesh)
  synthesis.check_output(recipe, test.num_classes, test.image_shape, config)


def run_synthesis(config: RunConfig, out: str, *, resume: bool = False, force: bool = False,
                  new_release: bool = False, quiet: bool = False,
                  reuse_release: str | None = None,
                  datasets: tuple[ImageDataset, ImageDataset] | None = None,
                  private_diagnostics: bool = False) -> dict:
  """The whole job. Returns a summary dict (paths, privacy, accuracy).

  `datasets`: (private, test) ImageDatasets given in memory (`make_dataset`)
  instead of loading `config.data`; pass the same ones again to resume.

  `reuse_release`: another run directory whose release (and ledger) this run
  copies instead of releasing again; its release settings must be identical,
  so the two runs together still spend the budget once.

  `private_diagnostics`: print exact facts about the private data to stderr,
  marked (privacy/diagnostics.py); they are never stored.
  """
  config.validate()
  if reuse_release is not None and (resume or force):
    raise RunDirError("--reuse-release starts a new run: it excludes --resume and --force")
  # Read and check the data before touching the output directory, so bad input
  # leaves nothing behind.
  if datasets is not None and config.protocol != protocols.NONE:
    raise ConfigError(f"--protocol {config.protocol} reads its published data set "
                      f"(config.data); in-memory datasets are not it")
  if datasets is not None:
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, source=f"in-memory:{datasets[0].name}"))
  private, test = load_private_and_test(config, datasets)
  evaluation.check_fid_files(config)
  public_models = load_public_models(config)
  recipe = build_recipe(config, test.image_shape, test.num_classes, public_models)
  mesh = device_mesh(config)
  preflight(recipe, private, test, config, mesh=mesh)
  release_arrays = recipe.release_arrays(config)
  if reuse_release is not None:
    check_reusable_release(reuse_release, config, release_arrays)
  public_spec = (describe_public_models(config, public_models, private)
                 if public_models is not None else None)
  if resume:
    # A damaged checkpoint fails here, before config.json takes the resumed settings.
    for name in (CHECKPOINTS, PRETRAIN_CHECKPOINTS, SELECTION_CHECKPOINTS):
      check_readable(os.path.join(out, name))
  quiet = quiet or not distributed.is_primary()

  with contextlib.ExitStack() as cleanup:
    def open_and_record() -> tuple[RunDir, PrivacyLedger | None]:
      # Held by the primary until the run ends, however it ends.
      cleanup.callback(lock(out).release)
      run, prior = open_run_dir(out, config, resume=resume, force=force,
                                new_release=new_release, release_arrays=release_arrays)
      io_utils.write_json_atomic(run.file(CONFIG), config.to_json())
      if public_spec is not None:
        io_utils.write_json_atomic(run.file(PUBLIC), public_spec)
      if reuse_release is not None:
        write_ledger(run.file(PRIVACY), read_ledger(os.path.join(reuse_release, PRIVACY)))
        shutil.copyfile(os.path.join(reuse_release, RELEASE), run.file(RELEASE))
        say(f"reusing the release of {reuse_release} (no new noise drawn)", quiet)
      return run, prior

    t0 = time.perf_counter()
    stage_seconds = {}

    def lap(stage: str) -> None:
      # Returned, never stored: the release's time grows with the private set's size.
      stage_seconds[stage] = round(time.perf_counter() - t0 - sum(stage_seconds.values()), 3)

    # Only the primary process touches the directory; the others learn where it
    # builds the run (in place or in staging) and whether it resumes.
    opened = distributed.on_primary(open_and_record, "open the run directory")
    run, prior = opened if opened is not None else (None, None)
    staged, resumed = distributed.broadcast(np.asarray(
        [run.staged, run.resumed] if run is not None else [0, 0], np.int32))
    if run is None:
      run = RunDir(out, staging_path(out) if staged else out, resumed=bool(resumed))
    else:
      cleanup.enter_context(run_log(run.file(LOG_TXT)))
      say(f"vpntk {config.method} run in {out}" + (" (resumed)" if run.resumed else ""),
          quiet=True)
    if mesh is not None:
      say(f"data-parallel over {mesh.size} {jax.devices()[0].platform.upper()} devices", quiet)
    if run.resumed or reuse_release is not None:
      say(f"reusing the stored private release of {out} (no new noise drawn)", quiet)
    else:
      # Every process computes its share of the private statistic; only the
      # primary draws noise and stores the release, which every process then
      # reads back below.
      statistic = recipe.private_statistic(private, config, mesh=mesh, quiet=quiet)

      def release_and_store() -> None:
        release, ledger = recipe.release(statistic, private, config, prior=prior, quiet=quiet,
                                         show_private=private_diagnostics)
        store_release(run, release, ledger, config)

      distributed.on_primary(release_and_store, "release")
    # What was stored is what every process trains on, fresh or resumed.
    ledger = read_ledger(run.file(PRIVACY))
    release = load_release(run.file(RELEASE), release_arrays, ledger)
    lap("release")
    state = recipe.post_process(release, test.num_classes, config, run, mesh=mesh, quiet=quiet)
    lap("post_process")

    charged = []

    def charge(record) -> PrivacyLedger:
      # Written before the steps it charges run: a kill never leaves them uncharged.
      charged.append(read_ledger(run.file(PRIVACY)).add(record))
      write_ledger(run.file(PRIVACY), charged[-1])
      return charged[-1]

    state = recipe.train_on_private(state, private, config, run, ledger=ledger, charge=charge,
                                    mesh=mesh, quiet=quiet)
    del private  # nothing after this point sees private data
    lap("train_on_private")
    if charged:
      ledger = charged[-1]
      if not ledger.within_budget():
        say(f"WARNING: this run's ledger spends epsilon {ledger.total_epsilon():.4g} > "
            f"{config.epsilon}: steps redone after a resume are charged again", quiet=False)
    distributed.barrier("trained")  # every process has closed its checkpoints
    if not distributed.is_primary():
      return {"run_dir": run.path, "process_index": jax.process_index()}
    if distributed.is_multi_process():
      state = jax.device_get(state)  # synthesis runs on the primary's devices only
    synthesis.save_loss_curve(run)
    images, labels = synthesis.synthesize(recipe.sampler, state, test.num_classes, config, run,
                                          quiet=quiet, class_names=test.class_names)
    lap("synthesize")
    metrics = evaluation.evaluate(images, labels, test, config, run, public_models=public_models,
                                  validation=load_validation_set(config), quiet=quiet)
    lap("evaluate")
    report.write_report(run.work)
    run.finish()
    return {"run_dir": run.path, "epsilon": config.epsilon, "delta": config.delta,
            "total_epsilon": ledger.total_epsilon(), "accuracy": metrics.get("accuracy"),
            "seconds": round(time.perf_counter() - t0, 1), "stage_seconds": stage_seconds}


def store_release(run: RunDir, release: dict[str, np.ndarray], ledger: PrivacyLedger,
                  config: RunConfig) -> None:
  # Ledger first: a crash in between leaves a charged release that is missing
  # (conservative), never a stored release that is not charged.
  write_ledger(run.file(PRIVACY), ledger)
  io_utils.save_npz_atomic(run.file(RELEASE), **release)
  if not ledger.within_budget():
    say(f"WARNING: this directory's ledger now holds {len(ledger.releases)} releases on "
         f"the private data; together they spend epsilon {ledger.total_epsilon():.3g} > "
         f"{config.epsilon}", quiet=False)


def resume_config(out: str, overrides: dict) -> RunConfig:
  """The stored config of run `out` with explicit `overrides` applied.

  `run_synthesis(..., resume=True)` then refuses any override that would
  change the release (see `config.RESUMABLE_CHANGES`).
  """
  return config_lib.with_overrides(load_config(out), overrides)


def evaluate_run(run_path: str, *, test_source: str | None = None, overrides=None,
                 quiet: bool = False) -> dict:
  """`vpntk evaluate`: re-evaluates a finished run's synthetic.npz (on `test_source`, any
  data source, instead of the run's own test set; its schema must be the run's), with
  evaluation settings `overrides` ({"fid_weights": ..., ...})."""
  config = config_lib.with_overrides(load_config(run_path), overrides or {})
  config.validate()
  evaluation.check_fid_files(config)
  path = os.path.join(run_path, SYNTHETIC)
  if not os.path.exists(path):
    raise RunDirError(f"{run_path} has no {SYNTHETIC}; run `vpntk synthesize` first")
  images, labels = read_synthetic(path)
  if config.data.source.startswith("in-memory:"):
    raise RunDirError(f"{run_path} was made from in-memory arrays ({config.data.source}); "
                      f"evaluate it with stages.evaluation.evaluate(images, labels, "
                      f"test_dataset, config, ...)")
  if test_source is None and not config.data.has_test_set:
    raise RunDirError(f"{run_path} was run without a test set; name one: "
                      f"vpntk evaluate {run_path} --test-data SOURCE")
  run_test = resize_dataset(load_test_set(config), config.data.image_size)
  # Evaluation only: the private data is not read, and config.json (the record
  # of how the run was made) is not rewritten.
  config = dataclasses.replace(config, evaluate=True, data=dataclasses.replace(
      config.data, test_source=test_source or config.data.test_source))
  test = run_test
  if test_source is not None:
    test = resize_dataset(load_test_set(config), config.data.image_size)
    wanted, got = Schema.of(run_test), Schema.of(test)
    if (got.num_classes, got.image_shape) != (wanted.num_classes, wanted.image_shape):
      raise DataError(f"{test.name} has {got.num_classes} classes of {got.image_shape} "
                      f"images; the run has {wanted.num_classes} of {wanted.image_shape}")
  metrics = evaluation.evaluate(images, labels, test, config, RunDir(run_path, run_path),
                                public_models=load_public_models(config),
                                validation=load_validation_set(config), quiet=quiet)
  report.write_report(run_path)  # the report shows the new metrics
  return metrics


def evaluate_source(source: str, *, test_source: str, overrides=None, out: str | None = None,
                    quiet: bool = False) -> dict:
  """`vpntk evaluate SOURCE --test-data TEST`: scores a synthetic set that is not a vpntk
  run (any data source, e.g. a DPImageBench gen.npz or its run folder) with the same
  classifiers and distances as a run, under the default settings and `overrides`.

  The test set is resized to the synthetic images' size; classes and channels must
  agree. metrics.json goes to `out` (a new file there), or nowhere.
  """
  if not test_source or test_source in ("none", NO_TEST_SET):
    raise ConfigError(f"{source} is not a vpntk run, so it has no test set of its own: "
                      f"name the real test set with --test-data SOURCE")
  config = config_lib.with_overrides(RunConfig(), overrides or {})
  evaluation.check_fid_files(config)
  if out is not None and os.path.exists(os.path.join(out, METRICS)):
    raise RunDirError(f"{os.path.join(out, METRICS)} exists; name another --out")
  if out is not None and os.path.exists(out) and not os.path.isdir(out):
    raise RunDirError(f"{out} exists and is not a directory; name another --out")
  test = load_test_source(test_source)
  synthetic = load_dataset(source, "train", num_classes=test.num_classes)
  (h, w, c), (_, _, test_c) = synthetic.image_shape, test.image_shape
  if h != w or c != test_c:
    raise DataError(f"{synthetic.name} holds {h}x{w}x{c} images; the test set {test.name} "
                    f"is {'x'.join(map(str, test.image_shape))}: they need square images "
                    f"with the same channels (the test set is resized to match)")
  test = resize_dataset(test, h)
  config = dataclasses.replace(config, data=dataclasses.replace(
      config.data, source=source, test_source=test_source, image_size=h))
  config.validate()
  with contextlib.ExitStack() as stack:
    where = out if out is not None else stack.enter_context(tempfile.TemporaryDirectory())
    os.makedirs(where, exist_ok=True)
    metrics = evaluation.evaluate(synthetic.images, synthetic.labels, test, config,
                                  RunDir(where, where), quiet=quiet)
  return {"synthetic": synthetic.name, **metrics}


def audit(config: RunConfig, *, num_examples: int = 1000, trials: int = 500,
          noise: bool = True, confidence: float = 0.95, seed: int | None = None,
          sampler: str = "lattice", neighbour: str = "shifted",
          private_diagnostics: bool = False) -> dict:
  """`vpntk audit`: empirical epsilon lower bound for this config's release.

  Neighbours: the first `num_examples` private images (as the run sees them:
  resized to `config.data.image_size`) and the same with a canary (an all-white
  image of another class) in place of one record (replace-one) or added
  (add/remove). `neighbour` "in-place": the canary replaces record 0 or is
  appended, so no other record moves. "shifted": the records are sorted by class
  (as an image folder loads them), and the canary is inserted at the front or
  replaces the first record and is sorted into its class, so every record in
  between moves: a release whose per-record randomness depended on positions
  would change by more than its sensitivity here. Both statistics come from the
  method's own feature code; the noise is the run's own plan (with a validation
  release, the main release's share of the composed budget).

  With noise, the floating-point reachability test runs too, against `sampler`
  ("lattice", what runs use, or "float32", the float32 sampler it replaced).

  The exact gap between the neighbours' statistics is a private fact: it is in
  the result only with `private_diagnostics`, marked.
  """
  config.validate()
  if neighbour not in ("shifted", "in-place"):
    raise ConfigError(f"neighbour must be 'shifted' or 'in-place', got {neighbour!r}")
  data, _ = load_private_and_test(config)
  images, labels = data.images[:num_examples].copy(), data.labels[:num_examples].copy()
  shifted = neighbour == "shifted"

  def by_class(imgs, lbls):
    if not shifted:
      return imgs, lbls
    order = np.argsort(lbls, kind="stable")
    return imgs[order], lbls[order]
  images, labels = by_class(images, labels)
  recipe = build_recipe(config, data.image_shape, data.num_classes, load_public_models(config))
  recipe.check_auditable(config)
  features = recipe.features
  # Under add/remove the neighbour has the canary added and both sums divide by
  # the same public count (declared, or here the audited set's size).
  audited = len(labels)
  m = config.public_num_examples or audited

  def mean(imgs, lbls):
    return np.asarray(ntk.embedding_to_matrix(
        features.private_sum(imgs, lbls, data.num_classes)), np.float64) / m

  mean_without = mean(images, labels)
  canary, canary_label = np.full_like(images[:1], 255), (labels[:1] + 1) % data.num_classes
  if config.adjacency == "replace_one":
    images[:1], labels[:1] = canary, canary_label
    images, labels = by_class(images, labels)
  elif shifted:
    images, labels = np.concatenate([canary, images]), np.concatenate([canary_label, labels])
  else:
    images, labels = np.concatenate([images, canary]), np.concatenate([labels, canary_label])
  mean_with = mean(images, labels)
  plan = mean_embedding.release_plan(config, m, features.norm_bound)
  sigma = plan.sigmas[mean_embedding.RELEASE_NAME] if noise else 0.0
  projection, reachability = audit_lib.trial_seeds(seed)
  result = audit_lib.audit_gaussian_release(
      mean_without, mean_with, sensitivity=plan.sensitivity, sigma=sigma, delta=config.delta,
      trials=trials, seeds=projection, confidence=confidence)
  if noise:
    result["reachability"] = audit_lib.reachability_audit(
        mean_without, mean_with, sampler=sampler, sensitivity=plan.sensitivity, sigma=sigma,
        delta=config.delta, trials=trials, seeds=reachability, confidence=confidence)
  gap = result.pop("statistic_gap")
  result.update(claimed_epsilon=config.epsilon if noise else None, delta=config.delta,
                num_examples=audited, sensitivity=plan.sensitivity, sigma=sigma,
                image_shape=list(data.image_shape), neighbour=neighbour)
  if private_diagnostics:
    result["private_diagnostics"] = diagnostics.marked(
        {"statistic_gap": gap, "gap_within_sensitivity": bool(gap <= plan.sensitivity)})
  return result


def check_features(config: RunConfig, *, num_examples: int = 64,
                   tolerance: float = ntk_check.DEFAULT_TOLERANCE) -> dict:
  """`vpntk check-features`: the run's NTK network and parameters (ntk_layers,
  ntk_init, seed) on `num_examples` real test images (public, so the numbers may
  be shown), the fast feature path against neural-tangents."""
  config.validate()
  if not (isinstance(num_examples, int) and num_examples >= 2):
    raise ConfigError(f"--examples must be an integer >= 2, got {num_examples!r}")
  if not config.data.has_test_set:
    raise ConfigError("check-features runs on the real test set (public); this config has "
                      "none: give one with --test-data SOURCE")
  test = resize_dataset(load_test_set(config), config.data.image_size)
  rows = balanced_subsample(test.labels, -(-num_examples // test.num_classes), seed=config.seed)
  rows = rows[:num_examples]
  network = mean_embedding.ntk_network(config)
  feature_map = NTKFeatureMap(network, input_dim=math.prod(test.image_shape), seed=config.seed)
  errors = ntk_check.compare_with_neural_tangents(
      network, feature_map.params, test.images[rows], test.labels[rows], test.num_classes)
  return {"network": feature_map.describe(), "images": f"{len(rows)} of {test.name}",
          "relative_errors": errors, "tolerance": tolerance,
          "ok": all(e <= tolerance for e in errors.values())}
