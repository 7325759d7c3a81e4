"""The run: data -> features -> private release -> generator training -> synthesis -> evaluation.

Pure computation lives in the modules each stage calls; this file holds the
edges: the run directory, files, progress output and the order of stages.

Run directory contract (`runs/NAME/`):
  config.json     the RunConfig
  privacy.json    the privacy ledger (every release, its sensitivity, sigma, ...)
  release.npz     the noisy embedding (and, with --validation-noise-scale, a
                  noisier copy for model selection): the only outputs that touched
                  private data
  checkpoints/    Orbax checkpoints of the generator training state
  best/, selection.json
                  with a validation release only: the checkpoint closest to it,
                  which synthesis uses, and every checkpoint's distance
  train_log.csv   step, loss, seconds
  synthetic.npz   `images` uint8 NHWC and `labels`
  samples.png     one row per class
  loss.png        training curve
  metrics.json    accuracy of classifiers trained on synthetic data, on the real test set
  report.md/.html samples, the privacy statement in plain words, metrics (vpntk report)
  public.json     VP-NTK only: the public models used (trained on public data only)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from vpntk_jax import config as config_lib
from vpntk_jax import distributed
from vpntk_jax import io_utils
from vpntk_jax import public
from vpntk_jax import report
from vpntk_jax import sharding
from vpntk_jax import training
from vpntk_jax import visualize
from vpntk_jax.config import RunConfig
from vpntk_jax.data import ImageDataset, load_dataset, resize_dataset
from vpntk_jax.errors import ConfigError, RunDirError, VpntkError
from vpntk_jax.evaluation import evaluate_synthetic, fid
from vpntk_jax.evaluation.protocol import balanced_subsample
from vpntk_jax.features import NTKFeatureMap, RFFFeatureMap
from vpntk_jax.features import ntk
from vpntk_jax.features.perceptual import PerceptualFeatureMap
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.models.prompt import PromptedGenerator
from vpntk_jax.privacy import PrivacyLedger, ReleaseRecord, accounting, read_ledger, write_ledger
from vpntk_jax.privacy.release import array_digest, gaussian_release, noise_key
from vpntk_jax.run_files import (CHECKPOINTS, CONFIG, LOSS_PNG, METRICS, PRIVACY, PUBLIC,
                                  RELEASE, SAMPLES, SELECTION, SELECTION_CHECKPOINTS,
                                  SYNTHETIC, TRAIN_LOG)
RELEASE_NAME = "labelled_mean_embedding"
VALIDATION_RELEASE_NAME = "validation_embedding"
# Ledger name -> array name in release.npz.
RELEASE_ARRAYS = {RELEASE_NAME: "embedding", VALIDATION_RELEASE_NAME: "validation_embedding"}


def _say(msg: str, quiet: bool) -> None:
  if not quiet:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------
# Method recipes: a feature map and a generator for the data's shape.


def build_method(config: RunConfig, image_shape: tuple[int, int, int], num_classes: int):
  """Returns (feature_map, sampler) for `config.method`: what gets released, what trains."""
  input_dim = int(np.prod(image_shape))
  network = ntk.NTKNetwork(tuple(config.ntk_layers), config.ntk_init)
  if config.method == "vp-ntk":
    models = public.load_public(config.public_model)
    public.check_compatible(models, image_shape)
    public.require_generator(models)
    if config.train.latent_dim != models.latent_dim:
      raise ConfigError(f"train.latent_dim is {config.train.latent_dim}; the public generator "
                        f"takes {models.latent_dim}")
    # The same test decides whether a release may be reused with another public model.
    if config_lib.release_reads_public_model(config):
      features = models.feature_map(network, config.seed)
    else:
      features = NTKFeatureMap(network, input_dim=input_dim, seed=config.seed)
    return features, PromptedGenerator(models.generator, models.generator_variables,
                                       config.prompt, num_classes, tuple(image_shape))
  if config.method == "dp-mepf":
    models = public.load_public(config.public_model)
    public.check_compatible(models, image_shape)
    features = PerceptualFeatureMap(models.extractor, models.extractor_params, tuple(image_shape),
                                    config.mepf_second_moment_weight)
  elif config.method == "dp-ntk":
    features = NTKFeatureMap(network, input_dim=input_dim, seed=config.seed)
  elif config.method == "dp-merf":
    features = RFFFeatureMap(input_dim=input_dim, num_features=config.rff_features,
                             bandwidth=config.rff_bandwidth, seed=config.seed)
  else:
    raise AssertionError(config.method)  # validate() rejects unknown methods
  generator = ConvCondGenerator(num_classes=num_classes, image_shape=tuple(image_shape),
                                hidden=config.train.generator_hidden,
                                channels=config.train.generator_channels)
  return features, training.GeneratorSampler(generator)


def device_mesh(config: RunConfig):
  """A data mesh when more than one device is used, else None (plain jit).

  In a multi-host job it spans the devices of every process.
  """
  n = jax.device_count() if config.devices is None else config.devices
  return sharding.data_mesh(n) if n > 1 else None


# ----------------------------------------------------------------------------
# Run directory.


@dataclasses.dataclass
class RunDir:
  """Where a run writes. `path` is the final place; `work` where files go now.

  They differ only for --force on an existing run: the new run is built in a
  sibling staging directory and swapped in at the end, so a failure leaves the
  old run untouched.
  """
  path: str
  work: str
  resumed: bool = False

  def file(self, name: str) -> str:
    return os.path.join(self.work, name)

  def finish(self) -> None:
    if self.work == self.path:
      return
    trash = self.path + ".replaced"
    if os.path.exists(trash):
      shutil.rmtree(trash)
    os.replace(self.path, trash)
    os.replace(self.work, self.path)
    shutil.rmtree(trash)
    self.work = self.path


def _is_nonempty_dir(path: str) -> bool:
  return os.path.isdir(path) and bool(os.listdir(path))


def _staging_path(out: str) -> str:
  return out.rstrip("/") + ".partial"


def open_run_dir(out: str, config: RunConfig, *, resume: bool, force: bool,
                 new_release: bool = False
                 ) -> tuple[RunDir, PrivacyLedger | None]:
  """Decides how to use `out`. Creates directories only once that is settled.

  When resuming, `config` must equal the stored one up to its allowed changes.
  Returns the run dir and the ledger of a run being replaced (its releases
  stay charged).
  """
  if resume and force:
    raise RunDirError("--resume and --force exclude each other")
  if os.path.exists(out) and not os.path.isdir(out):
    raise RunDirError(f"{out} exists and is not a directory")
  if not _is_nonempty_dir(out):
    if resume:
      raise RunDirError(f"nothing to resume: {out} does not exist or is empty")
    os.makedirs(out, exist_ok=True)
    return RunDir(out, out), None
  if resume:
    stored = _load_config(out)
    changed = [k for k in config_lib.diff(stored, config)
               if k not in config_lib.RESUMABLE_CHANGES]
    if changed:
      raise RunDirError(
          f"cannot resume {out} with different settings: {', '.join(changed)} differ from "
          f"its config.json. Resume with the same settings, or start a new run.")
    if not (os.path.exists(os.path.join(out, RELEASE)) and
            os.path.exists(os.path.join(out, PRIVACY))):
      raise RunDirError(
          f"{out} has no complete private release (release.npz + privacy.json) to resume "
          f"from; use --force to start it over (its ledger, if any, stays charged).")
    # Before anything is written: the release must be the one the ledger records.
    load_release(os.path.join(out, RELEASE), config, read_ledger(os.path.join(out, PRIVACY)))
    return RunDir(out, out, resumed=True), None
  if not force:
    raise RunDirError(
        f"{out} exists and is not empty. Use --resume to continue that run (reusing its "
        f"private release), --force to replace it, or another --out.")
  prior = None
  if os.path.exists(os.path.join(out, PRIVACY)):
    prior = read_ledger(os.path.join(out, PRIVACY))
    if prior.releases and not new_release:
      raise RunDirError(
          f"{out} holds a private release ({prior.total_epsilon():.3g}-DP). Replacing the run "
          f"draws fresh noise on the private data, which costs privacy again: the new ledger "
          f"will charge both releases. Add --new-release to accept that, or use --resume to "
          f"reuse the existing release.")
  staging = _staging_path(out)
  if os.path.exists(staging):
    shutil.rmtree(staging)
  os.makedirs(staging)
  return RunDir(out, staging), prior


def _load_config(run_path: str) -> RunConfig:
  path = os.path.join(run_path, CONFIG)
  if not os.path.exists(path):
    raise RunDirError(f"{run_path} is not a vpntk run directory (no {CONFIG})")
  with open(path) as f:
    return RunConfig.from_json(json.load(f))


# ----------------------------------------------------------------------------
# Stages.


def load_private_and_test(config: RunConfig, datasets=None) -> tuple[ImageDataset, ImageDataset]:
  """The private training set and the real test set, from `config.data` or given in memory."""
  if datasets is not None:
    private, test = datasets
  else:
    kwargs = dict(data_dir=config.data_dir, download=config.download,
                  label_attribute=config.label_attribute)
    private = load_dataset(config.data, "train", **kwargs)
    test = load_dataset(config.data, "test", num_classes=private.num_classes, **kwargs)
  if test.num_classes != private.num_classes:
    raise RunDirError(f"the test set has {test.num_classes} classes, the private set "
                      f"{private.num_classes}")
  private = resize_dataset(private, config.image_size)
  test = resize_dataset(test, config.image_size)
  if test.image_shape != private.image_shape:
    raise RunDirError(f"test images {test.image_shape} differ from training images "
                      f"{private.image_shape}")
  return private, test


def check_public_models(config: RunConfig, private: ImageDataset) -> dict:
  """VP-NTK: the optional overlap check of the public data against the private
  data; returns the public models' description for the run's public.json."""
  models = public.load_public(config.public_model)
  if config.check_public_overlap:
    pretrain_config = models.spec.get("pretrain_config", {})
    public_data = resize_dataset(
        load_dataset(pretrain_config.get("data", ""), "train",
                     data_dir=pretrain_config.get("data_dir")), private.image_shape[0])
    public.check_overlap(public_data, private)
  return {"path": os.path.abspath(config.public_model), **models.spec,
          "note": "public models: trained on public data only; not covered by, and not "
                  "needing, the privacy guarantee"}


def private_mean_embedding(features, private: ImageDataset, config: RunConfig, *,
                           quiet: bool = False) -> jax.Array:
  """The exact (P, C) labelled mean embedding of the private set. Never stored.

  In a multi-host job every process takes part (each sums its share).
  """
  m = len(private.labels)
  bar = tqdm(total=m, desc="private embedding", disable=quiet, dynamic_ncols=True)
  done = [0]

  def progress(n):
    bar.update(n - done[0])
    done[0] = n

  total = features.private_sum(private.images, private.labels, private.num_classes,
                               progress=progress, mesh=device_mesh(config))
  bar.close()
  return ntk.embedding_to_matrix(total) / m


def release_embedding(features, private: ImageDataset, mean: jax.Array, config: RunConfig, *,
                      prior: PrivacyLedger | None = None, quiet: bool = False
                      ) -> tuple[dict[str, np.ndarray], PrivacyLedger]:
  """Releases `mean`, the `private_mean_embedding`, once (Gaussian mechanism).

  Returns the release.npz arrays, {"embedding": noisy (P, C) matrix} plus
  "validation_embedding" (a second, noisier release of the same mean) when
  `config.validation_noise_scale` is set, and the ledger with them added. With
  a validation release the noise of both is calibrated for their composition.
  """
  m = len(private.labels)
  sensitivity = accounting.mean_embedding_sensitivity(m, config.adjacency,
                                                      norm_bound=features.norm_bound)
  scales = {RELEASE_NAME: 1.0}
  if config.validation_noise_scale is not None:
    scales[VALIDATION_RELEASE_NAME] = float(config.validation_noise_scale)
  sigmas = dict(zip(scales, accounting.calibrate_composition(
      config.epsilon, config.delta, list(scales.values()), accountant=config.accountant)))
  t0 = time.perf_counter()
  for warning in release_warnings(np.asarray(mean), private, config,
                                  sensitivity * sigmas[RELEASE_NAME]):
    _say(f"WARNING: {warning}", quiet=False)
  ledger = PrivacyLedger(epsilon=config.epsilon, delta=config.delta,
                         accountant=config.accountant, adjacency=config.adjacency)
  if prior is not None:
    for record in prior.releases:
      ledger = ledger.add(dataclasses.replace(
          record, status="superseded",
          notes=record.notes or "from the run this one replaced (--force); still charged"))
  key = noise_key(config.noise_seed)
  arrays = {}
  for i, (name, sigma) in enumerate(sigmas.items()):
    # Independent noise per release; the main release keeps the key it had
    # before validation releases existed.
    noisy = gaussian_release(mean, sensitivity=sensitivity, sigma=sigma,
                             key=key if i == 0 else jax.random.fold_in(key, i))
    arrays[RELEASE_ARRAYS[name]] = np.asarray(noisy, np.float32)
    purpose = ("training target" if name == RELEASE_NAME else
               "model selection only (noise x{:g})".format(scales[name]))
    ledger = ledger.add(ReleaseRecord.make(
        name, sensitivity=sensitivity, sigma=sigma, adjacency=config.adjacency,
        accountant=config.accountant, epsilon=config.epsilon, delta=config.delta,
        num_private_examples=m, noise_seed=config.noise_seed, shape=mean.shape,
        sha256=array_digest(arrays[RELEASE_ARRAYS[name]]),
        notes=f"{config.method} features; per-example norm <= {features.norm_bound}; "
              f"{purpose}"))
  _say(f"released the embedding ({mean.shape[0]:,} x {mean.shape[1]}) in "
       f"{time.perf_counter() - t0:.1f} s: sensitivity {sensitivity:.3g}, " +
       ", ".join(f"{n} sigma {s:.4g} (noise std {sensitivity * s:.3g})"
                 for n, s in sigmas.items()), quiet)
  return arrays, ledger


def load_release(path: str, config: RunConfig, ledger: PrivacyLedger) -> dict[str, np.ndarray]:
  """The arrays of a stored release.npz; checks it holds what `config` released and
  what `ledger` (its privacy.json) recorded."""
  with np.load(path) as z:
    release = {k: z[k] for k in z.files}
  wanted = {"embedding"} | ({"validation_embedding"} if config.validation_noise_scale else set())
  if set(release) != wanted:
    raise RunDirError(f"{path} holds {sorted(release)}, this run's settings need "
                      f"{sorted(wanted)}: it was not made with these settings")
  check_release_matches_ledger(path, release, ledger)
  return release


def check_release_matches_ledger(path: str, release: dict[str, np.ndarray],
                                 ledger: PrivacyLedger) -> None:
  """Raises unless every active release the ledger fingerprinted is the stored array.

  A release.npz swapped in from another run, or damaged, would otherwise be trained
  on under a privacy record that does not describe it.
  """
  for record in ledger.active_releases:
    array = RELEASE_ARRAYS.get(record.name)
    if record.sha256 is None or array not in release:
      continue  # written before digests were kept
    if array_digest(release[array]) != record.sha256:
      raise RunDirError(
          f"{path}: {array!r} is not the release its privacy.json records (sha256 differs): "
          f"it was replaced or damaged after it was made. Restore the original release.npz; "
          f"releasing again would spend the privacy budget a second time.")


def release_warnings(mean: np.ndarray, private: ImageDataset, config: RunConfig,
                     noise_std: float) -> list[str]:
  """Conditions under which the release is valid but likely useless or weak."""
  warnings = []
  m = len(private.labels)
  if config.delta >= 1.0 / m:
    warnings.append(f"delta {config.delta:g} >= 1/m = {1 / m:.3g}: a mechanism that publishes "
                    f"one random example outright would meet this delta; choose delta << 1/m")
  empty = [c for c, n in enumerate(private.class_counts()) if n == 0]
  if empty:
    warnings.append(f"classes {empty} have no private examples; their columns are pure noise")
  # Signal-to-noise ratio of the whole release (Frobenius norms). The norm of
  # the exact mean is not released, only printed to the operator.
  snr = float(np.linalg.norm(mean)) / (noise_std * math.sqrt(mean.size))
  if snr < 0.1:
    warnings.append(f"the noise swamps the embedding (signal-to-noise {snr:.3g}); expect poor "
                    f"synthetic data: use more private examples or a larger epsilon")
  return warnings


def train_generator(features, sampler, release: dict[str, np.ndarray], num_classes: int,
                    config: RunConfig, run: RunDir, *, quiet: bool = False):
  """Trains the generator (or prompts) against the release, resuming from checkpoints.

  With a validation release, returns the checkpoint closest to it (selection.json
  records the choice), else the last state.
  """
  loss = training.embedding_loss(config.resolved_loss(), config.cosine_weight)
  primary = distributed.is_primary()  # the others write only their part of the checkpoints
  return training.train_to_match(features, sampler, release["embedding"],
                                 num_classes=num_classes,
                                 validation_matrix=release.get("validation_embedding"),
                                 selection_dir=run.file(SELECTION_CHECKPOINTS),
                                 selection_log=run.file(SELECTION) if primary else None,
                                 config=config.train, seed=config.seed, loss_fn=loss,
                                 checkpoint_dir=run.file(CHECKPOINTS),
                                 log_path=run.file(TRAIN_LOG) if primary else None,
                                 mesh=device_mesh(config), progress=not quiet)


def synthesize(sampler, state, num_classes: int, config: RunConfig, run: RunDir, *,
               quiet: bool = False):
  """Balanced labelled synthetic set -> synthetic.npz and samples.png."""
  labels = np.arange(config.num_synthetic) % num_classes
  images = training.generate(sampler, state, jax.random.key(config.seed + 1), labels,
                             latent_dim=config.train.latent_dim, progress=not quiet)
  io_utils.save_npz_atomic(run.file(SYNTHETIC), images=images, labels=labels.astype(np.int32))
  visualize.save_sample_grid(run.file(SAMPLES), images, labels, num_classes)
  return images, labels


def evaluate(images, labels, test: ImageDataset, config: RunConfig, run: RunDir, *,
             quiet: bool = False) -> dict:
  metrics = evaluate_synthetic(images, labels, test.images, test.labels,
                               num_classes=test.num_classes, classifiers=config.classifiers,
                               train_size=config.eval_train_size, seed=config.seed,
                               cnn_epochs=config.cnn_epochs, progress=not quiet)
  metrics["test_set"] = test.name
  metrics["environment"] = environment()
  if config.public_model:
    # An auxiliary metric: its failure is recorded, never allowed to lose the run.
    try:
      metrics["public_feature_distance"] = public_feature_distance(images, labels, test, config)
    except VpntkError as e:
      metrics["public_feature_distance"] = {"error": str(e)}
      _say(f"WARNING: public feature distance not computed: {e}", quiet=False)
  io_utils.write_json_atomic(run.file(METRICS), metrics)
  return metrics


def environment() -> dict:
  """Where this process computes: GPU training is not bit-reproducible, so runs record it."""
  return {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "jax": jax.__version__}


def public_feature_distance(images, labels, test: ImageDataset, config: RunConfig) -> dict:
  """FID / KID between synthetic and real test images in the public extractor's
  (pooled, standardised) feature space: an offline stand-in for Inception FID."""
  models = public.load_public(config.public_model)
  if models.image_shape != test.image_shape:
    return {"skipped": f"public models are for {models.image_shape} images"}
  rows = balanced_subsample(labels, max(1, len(test) // test.num_classes), seed=config.seed)
  fmap = models.feature_map(ntk.NTKNetwork(tuple(config.ntk_layers)), seed=config.seed)
  feature_fn = jax.jit(lambda x: fmap.features(x.astype(jnp.float32) / 255.0))
  result = fid.fid_kid(feature_fn, images[rows], test.images, seed=config.seed)
  return {"features": f"public extractor ({models.spec['public_data']}), pooled", **result}


def _save_loss_curve(run: RunDir) -> None:
  rows = np.loadtxt(run.file(TRAIN_LOG), delimiter=",", skiprows=1, ndmin=2)
  if len(rows):
    visualize.save_loss_curve(run.file(LOSS_PNG), rows[:, 0], rows[:, 1])


def check_reusable_release(source: str, config: RunConfig) -> None:
  """Raises unless run `source` holds a complete release made with this config's release settings."""
  stored = _load_config(source)
  differ = config_lib.release_differences(stored, config)
  if differ:
    raise RunDirError(f"cannot reuse the release of {source}: {', '.join(differ)} differ, and "
                      f"they change what is released. Only post-processing settings (train.*, "
                      f"prompt.*, loss, cosine_weight, evaluation; public_model for a release on "
                      f"pixels) may differ.")
  for name in (RELEASE, PRIVACY):
    if not os.path.exists(os.path.join(source, name)):
      raise RunDirError(f"{source} has no {name} to reuse")
  load_release(os.path.join(source, RELEASE), config, read_ledger(os.path.join(source, PRIVACY)))


def run_synthesis(config: RunConfig, out: str, *, resume: bool = False, force: bool = False,
                  new_release: bool = False, quiet: bool = False,
                  reuse_release: str | None = None,
                  datasets: tuple[ImageDataset, ImageDataset] | None = None) -> dict:
  """The whole job. Returns a summary dict (paths, privacy, accuracy).

  `datasets`: (private, test) ImageDatasets given in memory (`make_dataset`)
  instead of loading `config.data`; pass the same ones again to resume.

  `reuse_release`: another run directory whose release (and ledger) this run
  copies instead of releasing again; its release settings must be identical,
  so the two runs together still spend the budget once.
  """
  config.validate()
  if reuse_release is not None:
    if resume or force:
      raise RunDirError("--reuse-release starts a new run: it excludes --resume and --force")
    check_reusable_release(reuse_release, config)
  # Read and check the data before touching the output directory, so bad input
  # leaves nothing behind.
  if datasets is not None:
    config = dataclasses.replace(config, data=f"in-memory:{datasets[0].name}")
  private, test = load_private_and_test(config, datasets)
  features, sampler = build_method(config, private.image_shape, private.num_classes)
  public_spec = (check_public_models(config, private)
                 if config.method in config_lib.PUBLIC_METHODS else None)
  quiet = quiet or not distributed.is_primary()

  def open_and_record() -> tuple[RunDir, PrivacyLedger | None]:
    run, prior = open_run_dir(out, config, resume=resume, force=force,
                              new_release=new_release)
    io_utils.write_json_atomic(run.file(CONFIG), config.to_json())
    if public_spec is not None:
      io_utils.write_json_atomic(run.file(PUBLIC), public_spec)
    if reuse_release is not None:
      write_ledger(run.file(PRIVACY), read_ledger(os.path.join(reuse_release, PRIVACY)))
      shutil.copyfile(os.path.join(reuse_release, RELEASE), run.file(RELEASE))
      _say(f"reusing the release of {reuse_release} (no new noise drawn)", quiet)
    return run, prior

  t0 = time.perf_counter()
  # Only the primary process touches the directory; the others learn where it
  # builds the run (in place or in staging) and whether it resumes.
  opened = distributed.on_primary(open_and_record, "open the run directory")
  run, prior = opened if opened is not None else (None, None)
  staged, resumed = distributed.broadcast(np.asarray(
      [run.work != run.path, run.resumed] if run is not None else [0, 0], np.int32))
  if run is None:
    run = RunDir(out, _staging_path(out) if staged else out, resumed=bool(resumed))
  if run.resumed or reuse_release is not None:
    _say(f"reusing the stored private release of {out} (no new noise drawn)", quiet)
  else:
    # Every process sums its share of the private data; only the primary draws
    # noise and stores the release, which every process then reads back below.
    mean = private_mean_embedding(features, private, config, quiet=quiet)

    def release_and_store() -> None:
      release, ledger = release_embedding(features, private, mean, config, prior=prior,
                                          quiet=quiet)
      _store_release(run, release, ledger, config, quiet)

    distributed.on_primary(release_and_store, "release the embedding")
  # What was stored is what every process trains on, fresh or resumed.
  ledger = read_ledger(run.file(PRIVACY))
  release = load_release(run.file(RELEASE), config, ledger)
  del private  # nothing after this point sees private data
  state = train_generator(features, sampler, release, test.num_classes, config, run,
                          quiet=quiet)
  distributed.barrier("trained")  # every process has closed its checkpoints
  if not distributed.is_primary():
    return {"run_dir": run.path, "process_index": jax.process_index()}
  if distributed.is_multi_process():
    state = jax.device_get(state)  # synthesis runs on the primary's devices only
  _save_loss_curve(run)
  images, labels = synthesize(sampler, state, test.num_classes, config, run, quiet=quiet)
  metrics = evaluate(images, labels, test, config, run, quiet=quiet)
  report.write_report(run.work)
  run.finish()
  summary = {"run_dir": run.path, "epsilon": config.epsilon, "delta": config.delta,
             "total_epsilon": ledger.total_epsilon(), "accuracy": metrics["accuracy"],
             "seconds": round(time.perf_counter() - t0, 1)}
  return summary


def _store_release(run: RunDir, release: dict[str, np.ndarray], ledger: PrivacyLedger,
                   config: RunConfig, quiet: bool) -> None:
  # Ledger first: a crash in between leaves a charged release that is missing
  # (conservative), never a stored release that is not charged.
  write_ledger(run.file(PRIVACY), ledger)
  io_utils.save_npz_atomic(run.file(RELEASE), **release)
  if not ledger.within_budget():
    _say(f"WARNING: this directory's ledger now holds {len(ledger.releases)} releases on "
         f"the private data; together they spend epsilon {ledger.total_epsilon():.3g} > "
         f"{config.epsilon}", quiet=False)


def resume_config(out: str, overrides: dict) -> RunConfig:
  """The stored config of run `out` with explicit `overrides` applied.

  `run_synthesis(..., resume=True)` then refuses any override that would
  change the release (see `config.RESUMABLE_CHANGES`).
  """
  return config_lib.with_overrides(_load_config(out), overrides)


def evaluate_run(run_path: str, *, quiet: bool = False) -> dict:
  """`vpntk evaluate`: re-evaluates a finished run's synthetic.npz."""
  config = _load_config(run_path)
  path = os.path.join(run_path, SYNTHETIC)
  if not os.path.exists(path):
    raise RunDirError(f"{run_path} has no {SYNTHETIC}; run `vpntk synthesize` first")
  with np.load(path) as z:
    images, labels = z["images"], z["labels"]
  if config.data.startswith("in-memory:"):
    raise RunDirError(f"{run_path} was made from in-memory arrays ({config.data}); evaluate "
                      f"it with pipeline.evaluate(images, labels, test_dataset, config, ...)")
  _, test = load_private_and_test(config)
  return evaluate(images, labels, test, config, RunDir(run_path, run_path), quiet=quiet)


def audit(config: RunConfig, *, num_examples: int = 1000, trials: int = 500,
          noise: bool = True, confidence: float = 0.95, seed: int | None = None) -> dict:
  """`vpntk audit`: empirical epsilon lower bound for this config's release.

  Neighbours: the first `num_examples` private images, and the same with
  example 0 replaced by a canary (an all-white image of another class).
  Both embeddings come from the method's own feature code.
  """
  from vpntk_jax.privacy import audit as audit_lib  # pylint: disable=g-import-not-at-top
  config.validate()
  if config.adjacency != "replace_one":
    raise RunDirError("the audit builds replace-one neighbours; use --adjacency replace_one")
  data = load_dataset(config.data, "train", data_dir=config.data_dir, download=config.download,
                      label_attribute=config.label_attribute)
  images, labels = data.images[:num_examples].copy(), data.labels[:num_examples].copy()
  m = len(labels)
  features, _ = build_method(config, data.image_shape, data.num_classes)

  def mean(imgs, lbls):
    return np.asarray(ntk.embedding_to_matrix(
        features.private_sum(imgs, lbls, data.num_classes)), np.float64) / m

  mean_without = mean(images, labels)
  images[0] = 255
  labels[0] = (labels[0] + 1) % data.num_classes
  mean_with = mean(images, labels)
  sensitivity = accounting.mean_embedding_sensitivity(m, config.adjacency,
                                                      norm_bound=features.norm_bound)
  sigma = accounting.calibrate_gaussian(config.epsilon, config.delta,
                                        accountant=config.accountant) if noise else 0.0
  result = audit_lib.audit_gaussian_release(
      mean_without, mean_with, sensitivity=sensitivity, sigma=sigma, delta=config.delta,
      trials=trials, key=noise_key(seed), confidence=confidence)
  result.update(claimed_epsilon=config.epsilon if noise else None, delta=config.delta,
                num_examples=m, sensitivity=sensitivity,
                gap_within_sensitivity=bool(result["statistic_gap"] <= sensitivity))
  return result
