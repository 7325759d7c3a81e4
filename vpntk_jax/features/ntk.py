"""NTK features of a fixed, untrained fully connected network.

The feature of one example x is phi(x) = d/d(theta) sum_k f_k(x; theta), the
gradient of the summed network outputs with respect to all parameters, scaled
to (at most) unit norm. <phi(x), phi(x')> is the empirical NTK of the summed
output (`tests/test_ntk_features.py` checks it against neural-tangents).

Two implementations of the labelled mean embedding
    mu[:, c] = (1/m) sum_{i: y_i = c} phi(x_i) / ||phi(x_i)||
live here:

* exact: per-example Jacobians (vmap of grad), in chunks. Memory grows with
  chunk size x parameter count; it is the reference the fast path is tested
  against, and the fallback for networks the fast path does not cover.
* fast: no per-example Jacobian ever exists. Parameters only sit in Dense
  layers, so the per-example gradient of a Dense layer is the outer product
  a_i (x) delta_i of its input and the gradient at its output, and
  ||phi_i||^2 = sum_l (||a_il||^2 + 1) ||delta_il||^2 (the +1 is the bias).
  One forward and one backward pass give every a and delta; the class-wise
  sums are then one matrix product per layer and class group.

Networks are stacks of Dense layers (an int: the width) and parameter-free,
per-example ops (a name from `ACTIVATIONS`), e.g. the DP-NTK MNIST network
`(800, "relu", "layernorm", 10)`. Any such stack is covered by the fast path.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from vpntk_jax import arrays
from vpntk_jax import sharding

Params = list  # [{"w": (d_in, d_out), "b": (d_out,)}, ...], one per Dense layer
Embedding = list  # like Params, every leaf with a trailing class axis

# A per-example feature norm is computed in float32; dividing by it leaves an
# exact-arithmetic norm of 1 +- (relative rounding error). Shrinking every
# normalised feature by this margin keeps its true norm <= 1, the bound the
# noise is calibrated for. Rounding error of float32 sums of squares over the
# widths used here is below 3e-4 even in the worst case (n * 2^-24 for
# n <= 5000 terms), so 1e-3 leaves room; tests check it on adversarial inputs.
NORM_SAFETY_MARGIN = 1e-3
# Squared norms below this are treated as zero features: they contribute
# nothing instead of dividing by ~0 (which could produce inf/NaN).
_TINY_SQ_NORM = 1e-30


def _layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm without scale or bias, eps as in PyTorch's default."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "erf": jax.lax.erf,
    "layernorm": _layer_norm,
}

Layer = Union[int, str]


@dataclasses.dataclass(frozen=True)
class NTKNetwork:
  """A fixed random network whose parameter gradients are the features.

  Attributes:
    layers: Dense widths (ints) and parameter-free op names, in order. The last
      Dense width is the number of outputs that get summed.
    init: "torch" (U(+-1/sqrt(fan_in)) for weights and biases, as the DP-NTK
      reference) or "lecun" (N(0, 1/fan_in) weights, zero biases).
  """
  layers: tuple[Layer, ...] = (800, "relu", "layernorm", 10)
  init: str = "torch"

  def __post_init__(self):
    if not any(isinstance(l, int) for l in self.layers):
      raise ValueError("an NTK network needs at least one Dense layer (an int)")
    for layer in self.layers:
      if isinstance(layer, str) and layer not in ACTIVATIONS:
        raise ValueError(f"unknown layer {layer!r}; known: {sorted(ACTIVATIONS)}")
      if isinstance(layer, int) and layer <= 0:
        raise ValueError(f"Dense width must be positive, got {layer}")
    if self.init not in ("torch", "lecun"):
      raise ValueError(f"init must be 'torch' or 'lecun', got {self.init!r}")

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(l for l in self.layers if isinstance(l, int))


def init_params(key: jax.Array, network: NTKNetwork, input_dim: int) -> Params:
  """Draws the fixed parameters. They are public: they never see private data."""
  params = []
  fan_in = input_dim
  for width in network.widths:
    key, wkey, bkey = jax.random.split(key, 3)
    bound = 1.0 / math.sqrt(fan_in)
    if network.init == "torch":
      w = jax.random.uniform(wkey, (fan_in, width), jnp.float32, -bound, bound)
      b = jax.random.uniform(bkey, (width,), jnp.float32, -bound, bound)
    else:
      w = jax.random.normal(wkey, (fan_in, width), jnp.float32) * bound
      b = jnp.zeros((width,), jnp.float32)
    params.append({"w": w, "b": b})
    fan_in = width
  return params


def num_params(params: Params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def _forward(network: NTKNetwork, params: Params, x: jax.Array,
             taps: Sequence[jax.Array] | None = None):
  """Returns the outputs (N, k) and the input of every Dense layer.

  `taps` are zeros added to every Dense pre-activation: the gradient of the
  output with respect to them is the per-example delta of that layer.
  """
  dense_inputs = []
  h = x
  dense_index = 0
  for layer in network.layers:
    if isinstance(layer, int):
      dense_inputs.append(h)
      p = params[dense_index]
      h = h @ p["w"] + p["b"]
      if taps is not None:
        h = h + taps[dense_index]
      dense_index += 1
    else:
      h = ACTIVATIONS[layer](h)
  return h, dense_inputs


def apply(network: NTKNetwork, params: Params, x: jax.Array) -> jax.Array:
  """Network outputs, (N, k), for flattened inputs x of shape (N, d)."""
  return _forward(network, params, x)[0]


def summed_output(network: NTKNetwork, params: Params, x: jax.Array) -> jax.Array:
  """f_sum(x) = sum_k f_k(x), shape (N,): its parameter gradient is the feature."""
  return jnp.sum(apply(network, params, x), axis=-1)


def flatten_images(images: jax.Array) -> jax.Array:
  """NHWC images (uint8 in [0, 255] or float in [0, 1]) -> (N, H*W*C) float32."""
  x = jnp.asarray(images)
  if x.dtype == jnp.uint8:
    x = x.astype(jnp.float32) / 255.0
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def normalising_scale(sq_norms: jax.Array) -> jax.Array:
  """1 / ||phi|| with the safety margin; 0 for (near-)zero features."""
  safe = jnp.where(sq_norms > _TINY_SQ_NORM, sq_norms, 1.0)
  scale = jax.lax.rsqrt(safe) / (1.0 + NORM_SAFETY_MARGIN)
  return jnp.where(sq_norms > _TINY_SQ_NORM, scale, 0.0)


# ----------------------------------------------------------------------------
# Exact path: explicit per-example features.


def per_example_features(network: NTKNetwork, params: Params, x: jax.Array) -> jax.Array:
  """Un-normalised features, (N, P): row i is the flattened gradient of f_sum(x_i)."""
  def single(xi):
    grads = jax.grad(lambda p: summed_output(network, p, xi[None])[0])(params)
    return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(grads)])
  return jax.vmap(single)(x)


def exact_labelled_embedding(network: NTKNetwork, params: Params, x: np.ndarray,
                             labels: np.ndarray, num_classes: int,
                             chunk_size: int = 256) -> np.ndarray:
  """Reference labelled mean embedding, (P, C), from explicit features.

  Features are computed in chunks and normalised with the float64 norm.
  """
  feature_fn = jax.jit(functools.partial(per_example_features, network))
  m = x.shape[0]
  total = None
  for start in range(0, m, chunk_size):
    phi = np.asarray(feature_fn(params, jnp.asarray(x[start:start + chunk_size])),
                     np.float64)
    norms = np.linalg.norm(phi, axis=1, keepdims=True)
    phi = np.divide(phi, norms, out=np.zeros_like(phi), where=norms > 0)
    onehot = np.eye(num_classes)[labels[start:start + chunk_size]]
    part = phi.T @ onehot
    total = part if total is None else total + part
  return total / m


# ----------------------------------------------------------------------------
# Fast path: per-example norms and class sums from activations and deltas.


def activations_and_deltas(network: NTKNetwork, params: Params, x: jax.Array):
  """Per-example Dense inputs a_l (N, d_in) and output gradients delta_l (N, d_out)."""
  # Taps derived from x (not from a shape): inside shard_map they must vary per
  # device, or the VJP would sum their cotangents over devices.
  zeros = jnp.zeros_like(x[:, :1])
  taps = [jnp.broadcast_to(zeros, (x.shape[0], w)) for w in network.widths]
  def f_sum(taps_):
    out, acts = _forward(network, params, x, taps_)
    return jnp.sum(out, axis=-1), acts
  out, vjp_fn, acts = jax.vjp(f_sum, taps, has_aux=True)
  # ones_like keeps the sharding type of `out` inside shard_map
  (deltas,) = vjp_fn(jnp.ones_like(out))
  return acts, deltas


def sq_feature_norms(acts, deltas) -> jax.Array:
  """||phi(x_i)||^2 for every example, without forming phi."""
  total = 0.0
  for a, d in zip(acts, deltas):
    total = total + (jnp.sum(jnp.square(a), -1) + 1.0) * jnp.sum(jnp.square(d), -1)
  return total


def normalised_feature_scales(network: NTKNetwork, params: Params, x: jax.Array):
  """Returns (acts, deltas, scales) with scales_i = 1 / ||phi(x_i)|| (with margin)."""
  acts, deltas = activations_and_deltas(network, params, x)
  return acts, deltas, normalising_scale(sq_feature_norms(acts, deltas))


def weighted_feature_sum(acts, deltas, weights: jax.Array) -> Params:
  """sum_i weights_i phi(x_i), as a parameter pytree: one matmul per layer."""
  out = []
  for a, d in zip(acts, deltas):
    wd = d * weights[:, None]
    out.append({"w": a.T @ wd, "b": jnp.sum(wd, axis=0)})
  return out


def grouped_labelled_sum(acts, deltas, weights: jax.Array) -> Embedding:
  """Class-grouped sums: inputs have a leading class axis, (C, n, ...).

  Returns the embedding pytree with a trailing class axis: leaf[..., c] =
  sum_i weights[c, i] phi(x[c, i]). One batched matmul per layer, so the
  cost is that of one backward pass over all rows, not C of them.
  """
  out = []
  for a, d in zip(acts, deltas):
    wd = d * weights[..., None]
    out.append({"w": jnp.einsum("cni,cno->ioc", a, wd),
                "b": jnp.einsum("cno->oc", wd)})
  return out


def synthetic_embedding(network: NTKNetwork, params: Params, x_grouped: jax.Array) -> Embedding:
  """Labelled mean embedding of a class-grouped synthetic batch (C, n, d).

  Differentiable in x (the generator's output): gradients flow through the
  per-example norms and the class sums, i.e. a double backward.
  """
  num_classes, n, dim = x_grouped.shape
  flat = x_grouped.reshape(num_classes * n, dim)
  acts, deltas, scales = normalised_feature_scales(network, params, flat)
  regroup = lambda t: t.reshape(num_classes, n, t.shape[-1])
  return grouped_labelled_sum([regroup(a) for a in acts], [regroup(d) for d in deltas],
                              scales.reshape(num_classes, n) / (num_classes * n))


def classes_first(embedding: Embedding) -> Embedding:
  """Moves every leaf's trailing class axis to the front: the layout of
  `synthetic_products`' target (a batched matmul per class needs it leading)."""
  return jax.tree.map(lambda leaf: jnp.moveaxis(jnp.asarray(leaf), -1, 0), embedding)


def synthetic_products(network: NTKNetwork, params: Params, target_classes_first: Embedding,
                       x_grouped: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(<T, S>, ||S||^2) for S = synthetic_embedding(x_grouped), without forming S.

  With S_c = sum_i w_ci a_ci d_ci^T per layer (plus the bias part sum_i w_ci d_ci):
  <T_c, S_c> = sum_i w_ci (a_ci^T T_c d_ci + t_c . d_ci), one (n, d_in) x (d_in,
  d_out) matmul per class; ||S_c||^2 = sum_ij w_ci w_cj (a_ci.a_cj + 1)(d_ci.d_cj),
  two n x n Grams. The embedding (d_in x d_out per class) and its backward never
  exist: the step does one large matmul per class and layer instead of three.
  """
  num_classes, n, dim = x_grouped.shape
  acts, deltas, scales = normalised_feature_scales(network, params,
                                                   x_grouped.reshape(num_classes * n, dim))
  weights = scales.reshape(num_classes, n) / (num_classes * n)
  cross, square = 0.0, 0.0
  for a, d, t in zip(acts, deltas, target_classes_first):
    a, d = a.reshape(num_classes, n, -1), d.reshape(num_classes, n, -1)
    projected = jnp.einsum("cni,cio->cno", a, t["w"]) + t["b"][:, None, :]
    cross = cross + jnp.sum(weights * jnp.sum(projected * d, -1))
    gram = (jnp.einsum("cni,cmi->cnm", a, a) + 1.0) * jnp.einsum("cno,cmo->cnm", d, d)
    square = square + jnp.einsum("cn,cnm,cm->", weights, gram, weights)
  return cross, square


# Device memory the private sum's queued chunk sums may hold (see private_embedding_sum).
PENDING_SUM_BYTES = 256 << 20


def _chunk_sum(network: NTKNetwork, params: Params, x: jax.Array, mask: jax.Array):
  # Full float32 matmuls on the private side: the norms bound the sensitivity.
  with jax.default_matmul_precision("float32"):
    acts, deltas, scales = normalised_feature_scales(network, params, x)
    return weighted_feature_sum(acts, deltas, scales * mask)


@functools.lru_cache(maxsize=8)
def _chunk_sum_fn(network: NTKNetwork, mesh):
  return sharding.summed_over_rows(functools.partial(_chunk_sum, network), mesh, 2)


def private_embedding_sum(network: NTKNetwork, params: Params, images: np.ndarray,
                          labels: np.ndarray, num_classes: int, *,
                          chunk_size: int = 2048, progress=None, mesh=None,
                          pending_bytes: int = PENDING_SUM_BYTES) -> Embedding:
  """sum_i phi(x_i)/||phi(x_i)|| y_i^T over a private set, in fixed-size chunks.

  Examples are grouped by class on the host, so each chunk is one class and
  costs one backward pass. Chunks are padded to `chunk_size` (padding rows get
  weight 0), so there is one compilation and memory is bounded by the chunk,
  whatever the dataset size. Returns the UN-divided sum; divide by m.

  The chunk sums are added on the host in float64, but not as each one ends:
  they wait on the device until `pending_bytes` of them are queued, so the
  host reads and sends the next chunks while the device computes (reading each
  sum at once would make host and device take turns). 0 reads each at once.

  Args:
    progress: optional callable(num_examples_done) for progress reporting.
    mesh: optional 1-D device mesh (`vpntk_jax.sharding.data_mesh`): each chunk
      is split over its devices.
  """
  labels = np.asarray(labels)
  chunk_size = sharding.round_up_to_devices(chunk_size, mesh)
  chunk_fn, place = _chunk_sum_fn(network, mesh), sharding.row_placer(mesh)
  totals = [{"w": np.zeros(p["w"].shape + (num_classes,), np.float64),
             "b": np.zeros(p["b"].shape + (num_classes,), np.float64)} for p in params]
  sum_bytes = 4 * num_params(params)
  pending: list[tuple[int, Params]] = []  # (class, chunk sum still on the device)

  def add_pending():
    for c, chunk_sum in pending:
      for total, part in zip(totals, chunk_sum):
        total["w"][..., c] += np.asarray(part["w"], np.float64)
        total["b"][..., c] += np.asarray(part["b"], np.float64)
    pending.clear()

  done = 0
  for c in range(num_classes):
    index = np.flatnonzero(labels == c)
    for start in range(0, len(index), chunk_size):
      rows = index[start:start + chunk_size]
      x, mask = arrays.padded_chunk(images, rows, chunk_size)
      pending.append((c, chunk_fn(params, place(flatten_images(x)), place(jnp.asarray(mask)))))
      if len(pending) * sum_bytes > pending_bytes:
        add_pending()
      done += len(rows)
      if progress is not None:
        progress(done)
  add_pending()
  return [{k: jnp.asarray(v, jnp.float32) for k, v in t.items()} for t in totals]


def embedding_to_matrix(embedding: Embedding) -> jax.Array:
  """Pytree with trailing class axis -> (P, C) matrix, in `per_example_features` order."""
  leaves = jax.tree.leaves(embedding)
  return jnp.concatenate([leaf.reshape(-1, leaf.shape[-1]) for leaf in leaves], axis=0)


def matrix_to_embedding(matrix: jax.Array, like: Embedding) -> Embedding:
  """Inverse of `embedding_to_matrix` for the structure of `like`."""
  leaves, treedef = jax.tree.flatten(like)
  out, offset = [], 0
  for leaf in leaves:
    size = int(np.prod(leaf.shape[:-1]))
    out.append(jnp.reshape(matrix[offset:offset + size], leaf.shape))
    offset += size
  return jax.tree.unflatten(treedef, out)
