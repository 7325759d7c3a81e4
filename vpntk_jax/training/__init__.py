"""Generator training against a released embedding: a thin Optax loop.

Everything here is post-processing of the released (noisy) embedding: it can
run for any number of steps at no privacy cost. The private data never enters.

  losses       the objectives: squared_distance, embedding_loss (blocks.LOSSES),
               matching_objective (through inner products where a feature map can)
  samplers     Sampler, GeneratorSampler, as_sampler, TrainState, init_state
  loop         make_optimizer, make_train_step, replicate, fit, train_to_match
  checkpoints  Checkpointer, BestCheckpoint, the validation selection record
  synthesis    generate, generation_batch_size

Every public name is re-exported here (`training.X`); `TrainConfig` and
`LOSSES` live in the JAX-free `vpntk_jax.blocks`.
"""

from vpntk_jax.blocks import LOSSES, TrainConfig
from vpntk_jax.training.checkpoints import BestCheckpoint, Checkpointer
from vpntk_jax.training.losses import (EmbeddingLoss, MatchingObjective, embedding_loss,
                                       matching_objective, squared_distance)
from vpntk_jax.training.loop import (
    fit,
    make_optimizer,
    make_train_step,
    make_validation_distance,
    replicate,
    train_to_match,
)
from vpntk_jax.training.samplers import (
    GeneratorSampler,
    Sampler,
    TrainState,
    as_sampler,
    class_grouped_batch,
    init_state,
)
from vpntk_jax.training.synthesis import (
    GENERATE_PIXELS_PER_BATCH,
    generate,
    generation_batch_size,
)

__all__ = [
    "LOSSES", "TrainConfig",
    "BestCheckpoint", "Checkpointer",
    "EmbeddingLoss", "MatchingObjective", "embedding_loss", "matching_objective",
    "squared_distance",
    "fit", "make_optimizer", "make_train_step", "make_validation_distance", "replicate",
    "train_to_match",
    "GeneratorSampler", "Sampler", "TrainState", "as_sampler", "class_grouped_batch",
    "init_state",
    "GENERATE_PIXELS_PER_BATCH", "generate", "generation_batch_size",
]
