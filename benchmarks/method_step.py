"""One generator training step per method (28x28, FashionMNIST's setting), one process.

    python -m benchmarks.method_step            # batch 500 (the table's setting)
    python -m benchmarks.method_step --quick    # batch 100, fewer repeats

Each step draws a class-balanced batch from the reference conditional
generator, embeds it with the method's feature map and takes one Adam step on
the MMD loss; only the feature map differs. DP-MERF's step is also timed with
its random frequencies redrawn inside every step (what a straightforward
implementation does when it derives them from the seed inside the loss)
against drawing them once per run. Weights are random (timing does not
depend on them). Prints one JSON object; ms are medians after warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform

import jax
import jax.numpy as jnp

from benchmarks.ntk_embedding import _time
from vpntk_jax import training
from vpntk_jax.features import NTKFeatureMap, RFFFeatureMap, rff
from vpntk_jax.features.perceptual import PerceptualFeatureMap
from vpntk_jax.models.extractor import ConvExtractor
from vpntk_jax.models.generator import ConvCondGenerator
from benchmarks.prompt_step import NETWORK, _step_ms

SHAPE = (28, 28, 1)


@dataclasses.dataclass(frozen=True)
class _RedrawnRFF(RFFFeatureMap):
  """DP-MERF with the frequencies drawn from the seed inside every call."""

  @property
  def frequencies(self) -> jax.Array:
    return rff.draw_frequencies(self.input_dim, self.num_features, self.bandwidth, self.seed)


def feature_maps() -> dict:
  extractor = ConvExtractor(10)
  eparams = extractor.init(jax.random.key(1), jnp.zeros((1,) + SHAPE))["params"]
  dim = SHAPE[0] * SHAPE[1]
  return {"dp-ntk": NTKFeatureMap(NETWORK, input_dim=dim),
          "dp-merf": RFFFeatureMap(input_dim=dim),
          "dp-merf_redrawn": _RedrawnRFF(input_dim=dim),
          "dp-mepf": PerceptualFeatureMap(extractor, eparams, SHAPE)}


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--batch", type=int)
  args = parser.parse_args()
  batch = args.batch or (100 if args.quick else 500)
  repeats = 3 if args.quick else 7
  sampler = training.GeneratorSampler(ConvCondGenerator(10, SHAPE))
  step_ms = {name: _step_ms(sampler, fmap, batch, repeats)
             for name, fmap in feature_maps().items()}
  result = {"benchmark": "method_step", "backend": jax.default_backend(),
            "device": str(jax.devices()[0]), "cpu": platform.processor() or platform.machine(),
            "jax": jax.__version__, "batch": batch, "step_ms": step_ms,
            "speedup_dpmerf_cached_vs_redrawn": step_ms["dp-merf_redrawn"] / step_ms["dp-merf"]}
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
