"""VP-NTK prompt step vs training the generator from scratch, same features, one process.

    python -m benchmarks.prompt_step --quick    # 28x28 only, small batch
    python -m benchmarks.prompt_step            # 28, 64, 128; batch 500

Both steps use the same objective (MMD + cosine) on the same feature map (NTK
features on the extractor's activations) and the same generator
architecture; they differ only in what trains: the prompts around a frozen
generator, or all generator weights. Weights are random (timing does not
depend on them). Also times DP-NTK's step (NTK on pixels, generator from
scratch) at each size. Prints one JSON object; ms are medians after warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.ntk_embedding import _time
from vpntk_jax import training
from vpntk_jax.blocks import PromptConfig
from vpntk_jax.features import NTKFeatureMap, ntk
from vpntk_jax.features.extractor_ntk import ExtractorNTKFeatureMap
from vpntk_jax.models.extractor import ConvExtractor
from vpntk_jax.models.generator import ConvCondGenerator
from vpntk_jax.models.prompt import PromptedGenerator

NETWORK = ntk.NTKNetwork((800, "relu", "layernorm", 10))


def _step_ms(sampler, features, batch: int, repeats: int) -> float:
  num_classes, per_class = 10, batch // 10
  target = features.template(num_classes)
  target = jax.tree.map(lambda t: jnp.full(t.shape, 1e-3, jnp.float32), target)
  optimizer = sampler.optimizer(optax.adam(1e-3))
  state = training.init_state(jax.random.key(0), sampler, optimizer, 5)
  objective = training.matching_objective(features, training.embedding_loss("mmd+cosine"))
  step = training.make_train_step(sampler, objective, target, optimizer,
                                  num_classes=num_classes, per_class=per_class, latent_dim=5,
                                  base_key=jax.random.key(1))
  return 1e3 * _time(lambda s: step(s)[1], state, repeats=repeats)


def bench_size(size: int, batch: int, repeats: int) -> dict:
  shape = (size, size, 1)
  generator = ConvCondGenerator(10, shape)
  variables = generator.init(jax.random.key(0), jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32),
                             train=False)
  extractor = ConvExtractor(10)
  eparams = extractor.init(jax.random.key(1), jnp.zeros((1,) + shape))["params"]
  dim = extractor.feature_dim(size)
  features = ExtractorNTKFeatureMap(extractor, eparams, np.zeros(dim, np.float32),
                                    np.ones(dim, np.float32), shape, NETWORK)
  prompt = PromptedGenerator(generator, variables, PromptConfig(), 10, shape)
  scratch = training.GeneratorSampler(generator)
  out = {"size": size, "batch": batch,
         "prompt_ms": _step_ms(prompt, features, batch, repeats),
         "scratch_generator_ms": _step_ms(scratch, features, batch, repeats)}
  out["speedup_prompt_vs_scratch"] = out["scratch_generator_ms"] / out["prompt_ms"]
  pixels = NTKFeatureMap(NETWORK, input_dim=size * size)
  out["dpntk_pixels_scratch_ms"] = _step_ms(scratch, pixels, batch, repeats)
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--sizes", type=int, nargs="+")
  parser.add_argument("--batch", type=int)
  args = parser.parse_args()
  sizes = args.sizes or ([28] if args.quick else [28, 64, 128])
  batch = args.batch or (100 if args.quick else 500)
  repeats = 3 if args.quick else 5
  result = {"benchmark": "prompt_step", "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "cpu": platform.processor() or platform.machine(),
            "jax": jax.__version__, "results": [bench_size(s, batch, repeats) for s in sizes]}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
