"""DPAgg-TI on FashionMNIST at CPU scale: a new concept from a small private set, and
per-class centroids on the full private split.

Public diffusion models (tiny UNet, 1,000 steps of batch 128, lr 1e-3, on the
4,000 public FashionMNIST images of `experiments.fashion_split`):
  public/fashion_diffusion_no_boot   without "Ankle boot" (class 9): 9 classes
  public/fashion_diffusion           all 10 classes
made by `python -m experiments.dpagg_ti_fashion --stage public`.

Concept setting (`--stage concept`): the private set is 300 real ankle boots
of the private split (replace-one, delta 1e-5); the model has never seen one.
For each seed, each image's token is inverted once (the run's own inversion
code, `TokenFeatures.tokens`) and stored; the runs at each epsilon read them
with --ti-embeddings, so the epsilon-1 and epsilon-10 runs of a seed share
their tokens and differ only in the noise. Beside them: DP-SGD-TI at the same
epsilon, the non-private centroid (NOT PRIVATE: the ceiling) and the public
mean token (no private data: the floor). Measured on 500 samples: the concept
rate (the share the 30-class public pool classifier, which has seen public
ankle boots, calls "Ankle boot") and KID against the 1,000 real test ankle
boots in that classifier's standardised features.

Guidance (`--stage guidance`): the guidance weight is chosen on public data
only: 100 public sneakers are inverted, their exact centroid sampled at
weights 0, 1, 2, 4, and the weight whose samples the pool classifier most
often calls "Sneaker" is used for every run.

Full-data setting (`--stage full`): per-class centroids on the 55,000
private images, Poisson rate 0.02 (about 1,100 images inverted), epsilon 1
and 10, evaluated with the library's classifier protocol on 6,000 samples.

Public tokens (`--stage public-tokens`): the concept model's own 9 class tokens
sampled, 200 images each: the rate at which the pool classifier recognises each.

Long inversion (`--stage long-inversion`): the non-private centroid of seed 0
with 200 inversion steps at learning rate 0.1 instead of 40 at 0.05.

    python -m experiments.dpagg_ti_fashion --stage all
    python -m experiments.dpagg_ti_fashion --models shipped --stage all   # the pool models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import numpy as np

PRIVATE = "data/fashion_split/private.npz"
PUBLIC_FASHION = "data/fashion_split/public.npz"
CLASSIFIER = "public/pool28_classifier"  # 30 pool classes; FashionMNIST keeps labels 0..9
CONCEPT_MODEL = "public/fashion_diffusion_no_boot"
FULL_MODEL = "public/fashion_diffusion"
CONCEPT, CONCEPT_NAME, GUIDE_CLASS = 9, "Ankle boot", 7  # 7: Sneaker
CONCEPT_DATA = "data/dpagg_ti/concept.npz"
NUM_CONCEPT = 300
RUNS = "runs/dpagg_ti"
RESULTS = "experiments/results/dpagg_ti_fashion.json"
# --models: (concept model, full model, runs, results). "shipped": the package's
# fast UNets on the 30-class pool (experiments.public_diffusion; the one without
# ankle boots ships once trained), each with its own runs and results.
MODEL_SETS = {
    "tiny": (CONCEPT_MODEL, FULL_MODEL, RUNS, RESULTS),
    "shipped": ("shipped:fashion_pool_no_ankle_boot", "shipped:fashion_pool",
                "runs/dpagg_ti_shipped", "experiments/results/dpagg_ti_fashion_shipped.json"),
}
GUIDANCE_WEIGHTS = (0.0, 1.0, 2.0, 4.0)
NUM_SAMPLES = 500


def inversion_settings(steps: int = 40, learning_rate: float = 0.05):
  from vpntk_jax.methods import dpagg_ti  # pylint: disable=import-outside-toplevel
  return dpagg_ti.InversionConfig(steps=steps, learning_rate=learning_rate, multiplicity=2,
                                  chunk_size=64)


def dp_sgd_settings():
  from vpntk_jax.blocks import DpSgdConfig  # pylint: disable=import-outside-toplevel
  return DpSgdConfig(steps=100, batch_size=64, clip_norm=0.01, multiplicity=2,
                     learning_rate=0.05, ema_decay=0.9, checkpoint_every=50)


def read_results() -> dict:
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      return json.load(f)
  return {}


def save_result(key: str, value) -> None:
  from vpntk_jax import io_utils  # pylint: disable=import-outside-toplevel
  results = read_results()
  results[key] = value
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  io_utils.write_json_atomic(RESULTS, results)


def use_models(name: str) -> None:
  global CONCEPT_MODEL, FULL_MODEL, RUNS, RESULTS  # pylint: disable=global-statement
  CONCEPT_MODEL, FULL_MODEL, RUNS, RESULTS = MODEL_SETS[name]


def make_public_models() -> None:
  if CONCEPT_MODEL.startswith("shipped:"):
    return  # made by experiments.public_diffusion
  from vpntk_jax.blocks import PublicPretrainConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.public.diffusion_model import pretrain_diffusion  # pylint: disable=import-outside-toplevel
  settings = PublicPretrainConfig(steps=1000, batch_size=128, learning_rate=1e-3,
                                  checkpoint_every=250)
  for out, excluded in ((CONCEPT_MODEL, (CONCEPT,)), (FULL_MODEL, ())):
    if not os.path.exists(os.path.join(out, "diffusion.json")):
      pretrain_diffusion(PUBLIC_FASHION, out, size="tiny", settings=settings,
                         exclude_classes=excluded, force=True)


def make_concept_data() -> None:
  """300 private ankle boots (the first in a fixed public permutation) as the private
  set; the real test split's 1,000 ankle boots as its test set."""
  if os.path.exists(CONCEPT_DATA):
    return
  with np.load(PRIVATE) as z:
    rows = np.flatnonzero(z["labels"] == CONCEPT)
    rows = np.sort(np.random.default_rng(0).permutation(rows)[:NUM_CONCEPT])
    test = np.flatnonzero(z["labels_test"] == CONCEPT)
    os.makedirs(os.path.dirname(CONCEPT_DATA), exist_ok=True)
    np.savez(CONCEPT_DATA, images=z["images"][rows], labels=np.zeros(len(rows), np.int64),
             images_test=z["images_test"][test], labels_test=np.zeros(len(test), np.int64),
             class_names=np.asarray([CONCEPT_NAME]))


class Judge:
  """The public pool classifier: class rates and KID in its features."""

  def __init__(self):
    from vpntk_jax import public  # pylint: disable=import-outside-toplevel
    self.models = public.load_public(CLASSIFIER)

  def index(self, name: str) -> int:
    """The pool classifier's label of the class `name` (a model trained without some
    pool classes numbers the rest 0..K-1)."""
    return list(self.models.spec["class_names"]).index(name)

  def class_rate(self, images: np.ndarray, cls: int) -> float:
    from vpntk_jax import public  # pylint: disable=import-outside-toplevel
    logits = public.classifier_logits(self.models, images)
    return float(np.mean(np.argmax(logits, axis=1) == cls))

  def kid(self, images: np.ndarray, real: np.ndarray, seed: int) -> float:
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from vpntk_jax.evaluation import fid  # pylint: disable=import-outside-toplevel
    from vpntk_jax.features import ntk  # pylint: disable=import-outside-toplevel
    fmap = self.models.feature_map(ntk.NTKNetwork((1,)), seed=seed)
    feature_fn = jax.jit(lambda x: fmap.features(x.astype(jnp.float32) / 255.0))
    return float(fid.fid_kid(feature_fn, images, real, seed=seed,
                             subset_size=min(len(images), len(real), 1000))["kid_mean"])


def sample_tokens(public, tokens: np.ndarray, guidance: float, seed: int,
                  n: int = NUM_SAMPLES) -> np.ndarray:
  """n images of token 0 (tokens (1, token_dim)), as a run's synthesis makes them."""
  import jax  # pylint: disable=import-outside-toplevel
  from vpntk_jax import training  # pylint: disable=import-outside-toplevel
  from vpntk_jax.methods._inversion import SamplingConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.stages import textual_inversion as ti  # pylint: disable=import-outside-toplevel
  from vpntk_jax.training.samplers import TrainState  # pylint: disable=import-outside-toplevel
  sampler = ti.token_sampler(public, SamplingConfig(guidance_scale=guidance), len(tokens))
  state = TrainState(step=np.asarray(0), params=tokens, model_state=tokens, opt_state=())
  labels = np.arange(n) % len(tokens)
  return training.generate(sampler, state, jax.random.key(seed + 1), labels,
                           latent_dim=sampler.latent_dim, batch_size=sampler.batch_size)


def token_features(public, seed: int, settings=None):
  from vpntk_jax.stages import textual_inversion as ti  # pylint: disable=import-outside-toplevel
  from vpntk_jax.models import unet  # pylint: disable=import-outside-toplevel
  from vpntk_jax.privacy import example_keys, noise  # pylint: disable=import-outside-toplevel
  # A fixed key: these tokens are computed outside a run, reproducibly (not private).
  key = example_keys.secret_key(seed, (noise.EXAMPLE_KEY_STREAM,))
  return ti.TokenFeatures(unet.token_apply_fn(public.model), public.params, public.tokens,
                          settings or inversion_settings(), key=key)


def exact_centroid(public, features, images: np.ndarray) -> np.ndarray:
  """The centroid token WITHOUT noise (not private)."""
  from vpntk_jax.stages import textual_inversion as ti  # pylint: disable=import-outside-toplevel
  total = features.labelled_sum(images, np.zeros(len(images), np.int64), np.arange(len(images)),
                                1)
  return ti.centroid_tokens(total, public.tokens)


def choose_guidance() -> float:
  results = read_results()
  if "guidance" in results:
    return results["guidance"]["chosen"]
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=import-outside-toplevel
  public, judge = load_diffusion_model(CONCEPT_MODEL), Judge()
  with np.load(PUBLIC_FASHION) as z:
    images = z["images"][z["labels"] == GUIDE_CLASS][:100]
  t0 = time.perf_counter()
  centroid = exact_centroid(public, token_features(public, 0), images)
  rates = {str(w): judge.class_rate(sample_tokens(public, centroid, w, 0, 200), GUIDE_CLASS)
           for w in GUIDANCE_WEIGHTS}
  chosen = float(max(GUIDANCE_WEIGHTS, key=lambda w: rates[str(w)]))
  save_result("guidance", {"what": "public sneakers inverted; their exact centroid sampled "
                                   "(200 images per weight); rate = share the pool classifier "
                                   "calls Sneaker", "rates": rates, "chosen": chosen,
                           "seconds": round(time.perf_counter() - t0, 1)})
  print("guidance", rates, "->", chosen, flush=True)
  return chosen


def concept_config(method: str, epsilon: float, seed: int, guidance: float, **options):
  from vpntk_jax.blocks import DataConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.config import RunConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.methods import dpagg_ti, dpsgd_ti, _inversion  # pylint: disable=import-outside-toplevel
  sampling = _inversion.SamplingConfig(guidance_scale=guidance)
  if method == "dpagg-ti":
    block = dpagg_ti.Options(diffusion_model=CONCEPT_MODEL, inversion=inversion_settings(),
                             sampling=sampling, **options)
  else:
    block = dpsgd_ti.Options(diffusion_model=CONCEPT_MODEL, dp_sgd=dp_sgd_settings(),
                             sampling=sampling)
  return RunConfig(method=method, data=DataConfig(source=CONCEPT_DATA), epsilon=epsilon,
                   delta=1e-5, adjacency="replace_one", seed=seed, num_synthetic=NUM_SAMPLES,
                   classifiers=("logistic_regression",), options=block)


def run_concept(seeds, epsilons) -> None:
  from vpntk_jax import pipeline  # pylint: disable=import-outside-toplevel
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=import-outside-toplevel
  guidance = choose_guidance()
  public, judge = load_diffusion_model(CONCEPT_MODEL), Judge()
  with np.load(CONCEPT_DATA) as z:
    private, real = z["images"], z["images_test"]

  def measure(images, seed):
    return {"concept_rate": judge.class_rate(images, CONCEPT),
            "kid": judge.kid(images, real, seed)}

  results = read_results().get("concept", {})

  def record(key, value):
    results[key] = value
    save_result("concept", results)
    print(key, value, flush=True)

  if "public-mean-token" not in results:
    tokens = np.mean(public.tokens[:-1], axis=0, keepdims=True)
    tokens *= np.median(np.linalg.norm(public.tokens[:-1], axis=1)) / np.linalg.norm(tokens)
    record("public-mean-token", measure(sample_tokens(public, tokens, guidance, 0), 0))
  for seed in seeds:
    features = token_features(public, seed)
    token_file = os.path.join(RUNS, "concept", f"tokens_seed{seed}.npy")
    if not os.path.exists(token_file):
      t0 = time.perf_counter()
      tokens = features.tokens(private, np.zeros(len(private), np.int64),
                               np.arange(len(private)))
      os.makedirs(os.path.dirname(token_file), exist_ok=True)
      np.save(token_file, tokens)
      record(f"inversion_seconds/seed{seed}", round(time.perf_counter() - t0, 1))
    key = f"non-private-centroid/seed{seed}"
    if key not in results:
      given = dataclasses.replace(features, given=np.load(token_file))
      centroid = exact_centroid(public, given, private)
      record(key, {**measure(sample_tokens(public, centroid, guidance, seed), seed),
                   "private": False})
    for epsilon in epsilons:
      for method, extra in (("dpagg-ti", {"ti_embeddings": token_file}), ("dpsgd-ti", {})):
        key = f"{method}/eps{epsilon:g}/seed{seed}"
        if key in results:
          continue
        out = os.path.join(RUNS, "concept", f"{method}_eps{epsilon:g}_seed{seed}")
        t0 = time.perf_counter()
        summary = pipeline.run_synthesis(concept_config(method, epsilon, seed, guidance, **extra),
                                         out, force=os.path.exists(out), new_release=True,
                                         quiet=True)
        with np.load(os.path.join(out, "synthetic.npz")) as z:
          images = z["images"]
        record(key, {**measure(images, seed), "total_epsilon": summary["total_epsilon"],
                     "seconds": round(time.perf_counter() - t0, 1)})


def run_long_inversion(seed: int = 0) -> None:
  """The non-private centroid (NOT PRIVATE) with 5x the inversion steps and twice the
  learning rate: whether longer inversion lifts the ceiling."""
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=import-outside-toplevel
  key = f"non-private-centroid-200-steps-lr0.1/seed{seed}"
  results = read_results().get("concept", {})
  if key in results:
    return
  guidance = choose_guidance()
  public, judge = load_diffusion_model(CONCEPT_MODEL), Judge()
  with np.load(CONCEPT_DATA) as z:
    private, real = z["images"], z["images_test"]
  t0 = time.perf_counter()
  features = token_features(public, seed, inversion_settings(steps=200, learning_rate=0.1))
  images = sample_tokens(public, exact_centroid(public, features, private), guidance, seed)
  results[key] = {"concept_rate": judge.class_rate(images, CONCEPT),
                  "kid": judge.kid(images, real, seed), "private": False,
                  "seconds": round(time.perf_counter() - t0, 1)}
  save_result("concept", results)
  print(key, results[key], flush=True)


def public_token_rates() -> None:
  """How often the pool classifier recognises the concept model's own classes, sampled
  from their own label tokens (200 images each, the chosen guidance): what the
  public model can render at all."""
  from vpntk_jax.public.diffusion_model import load_diffusion_model  # pylint: disable=import-outside-toplevel
  if "public_token_rates" in read_results():
    return
  guidance = choose_guidance()
  public, judge = load_diffusion_model(CONCEPT_MODEL), Judge()
  rates = {}
  for token, name in enumerate(public.spec["class_names"]):
    images = sample_tokens(public, public.tokens[token:token + 1], guidance, 0, 200)
    rates[name] = judge.class_rate(images, judge.index(name))
  save_result("public_token_rates", rates)
  print("public token rates", rates, flush=True)
  # Where seed 0's inverted tokens sit among the public ones.
  tokens = np.load(os.path.join(RUNS, "concept", "tokens_seed0.npy")).astype(np.float64)
  table = public.tokens[:-1].astype(np.float64)
  start = table.mean(axis=0)
  units = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
  pairs = [np.linalg.norm(a - b) for i, a in enumerate(table) for b in table[i + 1:]]
  geometry = {"median_move_from_start": float(np.median(np.linalg.norm(tokens - start, axis=1))),
              "median_public_token_distance": float(np.median(pairs)),
              "norm_of_mean_unit_token": float(np.linalg.norm(units.mean(axis=0)))}
  save_result("token_geometry_seed0", geometry)
  print("token geometry", geometry, flush=True)


def run_full(epsilons, seed: int = 0) -> None:
  from vpntk_jax import pipeline  # pylint: disable=import-outside-toplevel
  from vpntk_jax.blocks import DataConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.config import RunConfig  # pylint: disable=import-outside-toplevel
  from vpntk_jax.methods import dpagg_ti, _inversion  # pylint: disable=import-outside-toplevel
  guidance = choose_guidance()
  results = read_results().get("full", {})
  for epsilon in epsilons:
    key = f"dpagg-ti/eps{epsilon:g}/seed{seed}"
    if key in results:
      continue
    config = RunConfig(
        method="dpagg-ti", data=DataConfig(source=PRIVATE), epsilon=epsilon, delta=1e-5,
        seed=seed, num_synthetic=6000,
        options=dpagg_ti.Options(diffusion_model=FULL_MODEL, inversion=inversion_settings(),
                                 sampling_rate=0.02,
                                 sampling=_inversion.SamplingConfig(guidance_scale=guidance)))
    out = os.path.join(RUNS, "full", f"dpagg-ti_eps{epsilon:g}_seed{seed}")
    t0 = time.perf_counter()
    summary = pipeline.run_synthesis(config, out, force=os.path.exists(out), new_release=True,
                                     quiet=True)
    results[key] = {"accuracy": summary["accuracy"], "total_epsilon": summary["total_epsilon"],
                    "seconds": round(time.perf_counter() - t0, 1)}
    save_result("full", results)
    print(key, results[key], flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stage", choices=("public", "guidance", "public-tokens", "concept",
                                          "long-inversion", "full", "all"),
                      default="all")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 10.0])
  parser.add_argument("--models", choices=sorted(MODEL_SETS), default="tiny",
                      help="the public diffusion models (MODEL_SETS)")
  args = parser.parse_args()
  use_models(args.models)
  if args.stage in ("public", "all"):
    make_public_models()
  make_concept_data()
  if args.stage in ("guidance", "all"):
    choose_guidance()
  if args.stage in ("public-tokens", "all"):
    public_token_rates()
  if args.stage in ("concept", "all"):
    run_concept(args.seeds, args.epsilons)
  if args.stage in ("long-inversion", "all"):
    run_long_inversion()
  if args.stage in ("full", "all"):
    run_full(args.epsilons)


if __name__ == "__main__":
  main()
