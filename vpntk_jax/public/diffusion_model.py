"""A public diffusion model: a class-conditional EDM UNet trained on public images only.

`vpntk pretrain-diffusion` writes one; DPAgg-TI and DP-SGD-TI condition it on
tokens learned from the private images. The directory:
  diffusion.json  {"format": "vpntk-public-diffusion/1", "unet": the UNetConfig
                  fields, "public_data", "class_names", "pretrain": settings,
                  "seconds", "privacy"}; written last, so a directory with it
                  is complete
  models/         Orbax checkpoint of {"params": the UNet's (EMA) parameters}
A model trained elsewhere loads the same way once saved in this layout with
`save_diffusion_model`; its label table (`label_embed`, num_classes + 1 rows,
the last the null class) is what textual inversion extends.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from vpntk_jax import io_utils
from vpntk_jax.blocks import PublicPretrainConfig
from vpntk_jax.data import load_dataset, resize_dataset
from vpntk_jax.data.schema import public_schema, with_public_schema
from vpntk_jax.errors import ConfigError, MissingSplitError, RunDirError
from vpntk_jax.models import unet
from vpntk_jax.public import shipped
from vpntk_jax.public.artefact import shape_difference, stored_shapes, tree_shapes
from vpntk_jax.run_files import PRETRAIN_CHECKPOINTS, TRAIN_LOG
from vpntk_jax.staging import check_replaceable, is_nonempty_dir, stage
from vpntk_jax.training.checkpoints import reading_checkpoint
from vpntk_jax.log import say

DIFFUSION_JSON = "diffusion.json"
MODELS = "models"
FORMAT = "vpntk-public-diffusion/1"
DIFFUSION_DIR_NAMES = frozenset({DIFFUSION_JSON, MODELS, PRETRAIN_CHECKPOINTS, TRAIN_LOG})


@dataclasses.dataclass(frozen=True, eq=False)
class PublicDiffusion:
  """A loaded public diffusion model."""
  spec: dict
  model: unet.UNet
  params: Any
  path: str | None = None

  @property
  def config(self) -> unet.UNetConfig:
    return self.model.config

  @property
  def tokens(self) -> np.ndarray:
    """The label table: one token per public class, then the null token."""
    return np.asarray(unet.label_table(self.params), np.float32)


def unet_from_spec(spec: dict) -> unet.UNet:
  fields = dict(spec["unet"])
  for name in ("image_shape", "channel_mult"):
    fields[name] = tuple(fields[name])
  try:
    return unet.UNet(unet.UNetConfig(**fields))
  except TypeError as e:
    raise ConfigError(f"{DIFFUSION_JSON}: 'unet' is not a UNetConfig ({e})") from None


def save_diffusion_model(out: str, model: unet.UNet, params, **spec) -> None:
  """Writes models/ then diffusion.json into `out` (which must not hold models yet)."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.abspath(os.path.join(out, MODELS)), {"params": params})
  config = dataclasses.asdict(model.config)
  io_utils.write_json_atomic(os.path.join(out, DIFFUSION_JSON), {
      "format": FORMAT, "unet": config, **spec,
      "privacy": spec.get("privacy", "public data only: no privacy cost, no guarantee for "
                                     "the public data")})


def load_diffusion_model(path: str) -> PublicDiffusion:
  """The model in `path` (`vpntk pretrain-diffusion`, or saved in its layout;
  `shipped:NAME`: a model the package ships, checked against its sha256 list)."""
  path = shipped.resolve(path)
  spec_path = os.path.join(path, DIFFUSION_JSON)
  if not os.path.isfile(spec_path):
    raise ConfigError(f"{path} holds no public diffusion model ({DIFFUSION_JSON} missing); "
                      f"make one with `vpntk pretrain-diffusion --out {path}`")
  with open(spec_path) as f:
    spec = json.load(f)
  if spec.get("format") != FORMAT:
    raise ConfigError(f"{spec_path}: format {spec.get('format')!r}, expected {FORMAT!r}")
  model = unet_from_spec(spec)
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          {"params": jax.eval_shape(lambda: unet.init_params(model, jax.random.key(0)))})
  directory = os.path.abspath(os.path.join(path, MODELS))
  with reading_checkpoint(directory), ocp.StandardCheckpointer() as checkpointer:
    shapes = stored_shapes(checkpointer, directory)
    if not any("label_embed" in k for k in shapes):
      raise ConfigError(f"{path}: the UNet has no conditioning table (label_embed): "
                        f"textual inversion learns rows of it")
    differ = shape_difference(shapes, tree_shapes(abstract))
    if differ:
      raise ConfigError(f"the checkpoint in {path}/{MODELS} does not match the UNet in its "
                        f"{DIFFUSION_JSON} ({differ})")
    tree = checkpointer.restore(directory, abstract)
  return PublicDiffusion(spec, model, tree["params"], path=os.path.abspath(path))


def start_params(public: PublicDiffusion, model: unet.UNet, class_rows):
  """`model`'s parameters started from the public model's: every weight copied, and
  the label table rebuilt for `model`'s classes, class c's row the mean of the
  public rows `class_rows[c]` (empty: the public null row), the null row the public
  null row. `model` must be the public UNet but for its number of classes."""
  same = dataclasses.replace(public.config, num_classes=model.config.num_classes,
                             label_dropout=model.config.label_dropout)
  if same != model.config:
    raise ConfigError(f"the start model {public.path} is a different UNet "
                      f"({public.config}) from the run's ({model.config})")
  public_table = np.asarray(unet.label_table(public.params))
  null = public_table[-1]
  rows = [np.mean(public_table[list(r)], axis=0) if len(r) else null for r in class_rows]
  table = np.stack(rows + [null]).astype(public_table.dtype)
  # The configs agree but for the classes, so only the label table differs in shape.
  return dict(public.params, label_embed={"embedding": table})


def _latest_step(directory: str) -> int | None:
  """The largest step Orbax committed in `directory` (its numbered folders; a save in
  flight is a temporary folder, not counted)."""
  steps = [int(name) for name in os.listdir(directory) if name.isdigit()
           and os.path.exists(os.path.join(directory, name, "_CHECKPOINT_METADATA"))]
  return max(steps) if steps else None


def load_pretrain_checkpoint(path: str, *, size: str, image_shape, class_names,
                             label_dropout: float = 0.1) -> PublicDiffusion:
  """The EMA weights of the latest checkpoint of a `pretrain_diffusion` training (its
  `pretrain_checkpoints` folder, or a run directory holding one, e.g. `out`.partial
  while it trains), as a PublicDiffusion whose spec says `checkpoint_step`.

  Read-only: the step's folder is copied to a temporary directory and restored from
  there, so a training that keeps writing (and deleting old steps) is not disturbed;
  a step deleted mid-copy is retried with the newer one. The checkpoint stores no
  architecture: `size`, `image_shape` and the classes must be the training's (a
  mismatch of shapes is refused)."""
  import tempfile  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from vpntk_jax.training.samplers import TrainState  # pylint: disable=import-outside-toplevel
  directory = os.path.join(path, PRETRAIN_CHECKPOINTS)
  if not os.path.isdir(directory):
    directory = path
  if not os.path.isdir(directory):
    raise ConfigError(f"{path} is neither a public diffusion model ({DIFFUSION_JSON}) nor a "
                      f"training's checkpoint folder")
  config = unet.unet_config(size, image_shape, len(class_names), label_dropout=label_dropout)
  model = unet.UNet(config)
  params = jax.eval_shape(lambda: unet.init_params(model, jax.random.key(0)))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  like = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=params, model_state=params,
                    opt_state=jax.eval_shape(optax.adam(1e-3).init, params))
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          like)
  with tempfile.TemporaryDirectory() as scratch:
    for _ in range(3):
      step = _latest_step(directory)
      if step is None:
        raise ConfigError(f"{directory} holds no finished checkpoint yet")
      copy = os.path.join(scratch, str(step))
      try:
        shutil.copytree(os.path.join(directory, str(step)), copy)
        break
      except (FileNotFoundError, shutil.Error):  # that step was deleted as a newer one landed
        shutil.rmtree(copy, ignore_errors=True)
    else:
      raise ConfigError(f"the checkpoints in {directory} changed during three copies; retry")
    item = os.path.join(copy, "default")
    with reading_checkpoint(item), ocp.StandardCheckpointer() as checkpointer:
      # The EMA weights' shapes (the stored tree names TrainState's fields as dict keys).
      stored = {k: v for k, v in stored_shapes(checkpointer, item).items()
                if k.startswith("['model_state']")}
      differ = shape_difference(stored, tree_shapes({"model_state": params}))
      if differ:
        raise ConfigError(f"the checkpoint in {directory} is not a {size} UNet for images "
                          f"{tuple(image_shape)} and {len(class_names)} classes ({differ})")
      state = checkpointer.restore(item, abstract)
  spec = {"format": FORMAT, "unet": dataclasses.asdict(config), "size": size,
          "class_names": [str(n) for n in class_names], "checkpoint_step": int(state.step),
          "privacy": "public data only: no privacy cost, no guarantee for the public data"}
  return PublicDiffusion(spec, model, state.model_state, path=os.path.abspath(path))


def pretrain_diffusion(source: str, out: str, *, size: str = "fast", image_size: int = 28,
                       settings=None, label_dropout: float = 0.1, seed: int = 0,
                       exclude_classes: tuple[int, ...] = (),
                       classes: tuple[str, ...] | None = None, force: bool = False,
                       resume: bool = False, quiet: bool = False) -> PublicDiffusion:
  """Trains a class-conditional EDM UNet on the train split of public data `source`
  (without the classes `exclude_classes`, which are dropped and the rest
  relabelled 0..K-1 in order) and saves it in `out`, built beside it and swapped in
  at the end, so a failure leaves an existing `out` as it was.

  Its classes are `classes` (--classes) if given, else those of the source's test
  split or stored class names (`schema.public_schema`); a label outside them is
  refused, a class without images is kept. With `resume`, an interrupted training
  (its checkpoints in `out`.partial) continues where it stopped."""
  from vpntk_jax.diffusion.train import pretrain_edm  # pylint: disable=g-import-not-at-top
  settings = (settings or PublicPretrainConfig()).validate()
  data = resize_dataset(load_dataset(source, "train"), image_size)
  test = None
  if not classes:
    try:
      test = load_dataset(source, "test")
    except MissingSplitError:
      pass
  schema = public_schema(source, classes=classes, test=test, names=data.class_names,
                         image_shape=data.image_shape)
  data = with_public_schema(data, schema, "train")
  names = list(data.class_names or [str(c) for c in range(data.num_classes)])
  bad = [c for c in exclude_classes if not 0 <= c < data.num_classes]
  if bad:
    raise ConfigError(f"--exclude-classes {bad}: {source} has classes 0..{data.num_classes - 1}")
  kept = [c for c in range(data.num_classes) if c not in set(exclude_classes)]
  if not kept:
    raise ConfigError("--exclude-classes leaves no class to train on")
  relabel = np.full(data.num_classes, -1, np.int32)
  relabel[kept] = np.arange(len(kept), dtype=np.int32)
  rows = np.flatnonzero(relabel[data.labels] >= 0)
  images, labels = data.images[rows], relabel[data.labels[rows]]
  if is_nonempty_dir(out):
    if not force:
      raise RunDirError(f"{out} exists and is not empty; use --force to replace it or "
                        f"another --out")
    check_replaceable(out, DIFFUSION_DIR_NAMES, DIFFUSION_JSON, "a public diffusion model")
  run = stage(out, resume=resume)
  t0 = time.perf_counter()
  config = unet.unet_config(size, data.image_shape, len(kept), label_dropout=label_dropout)
  model = unet.UNet(config)
  params = unet.init_params(model, jax.random.key(seed))
  say(f"public diffusion model: a {size} UNet ({unet.count_params(params):,} parameters) on "
      f"{len(rows)} images of {len(kept)} classes of {data.name}", quiet)
  ema = pretrain_edm(unet.make_apply_fn(model), params, images, labels, settings,
                     num_classes=len(kept), label_dropout=label_dropout, seed=seed,
                     checkpoint_dir=run.file(PRETRAIN_CHECKPOINTS), log_path=run.file(TRAIN_LOG),
                     quiet=quiet)
  save_diffusion_model(run.work, model, ema, public_data=data.name, size=size,
                       class_names=[names[c] for c in kept],
                       excluded_classes=[names[c] for c in exclude_classes],
                       pretrain=dataclasses.asdict(settings), seed=seed,
                       seconds=round(time.perf_counter() - t0, 1))
  shutil.rmtree(run.file(PRETRAIN_CHECKPOINTS))  # the EMA weights are saved: not needed
  run.finish()
  say(f"public diffusion model saved in {out}", quiet)
  return load_diffusion_model(out)
