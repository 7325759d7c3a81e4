"""The fast NTK feature path checked against neural-tangents (`vpntk check-features`).

Three comparisons on a sample of images, each a relative error
max |fast - reference| / max |reference|:

- the explicit features' Gram matrix against `neural_tangents.empirical_ntk_fn`
  (the empirical NTK of the summed output is exactly that Gram matrix);
- the fast squared feature norms (from activations and output gradients, no
  feature ever formed) against the kernel's diagonal: they set each feature's
  normalisation, which the sensitivity bound rests on;
- the fast labelled mean embedding against the mean of explicitly formed,
  normalised features.

neural-tangents is the `ntk` extra (`pip install 'vpntk_jax[ntk]'`).
"""

from __future__ import annotations

import jax
import numpy as np

from vpntk_jax.errors import ConfigError
from vpntk_jax.features import ntk

# float32 throughout: agreement to 1e-4 of the largest entry is what exact
# arithmetic rounded to float32 gives on these sizes; a wrong formula is off by O(1).
DEFAULT_TOLERANCE = 1e-4


def _neural_tangents():
  try:
    import vpntk_jax._nt_compat  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import neural_tangents as nt  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConfigError(f"neural-tangents is not installed ({e}); install the extra: "
                      f"pip install 'vpntk_jax[ntk]'") from None
  return nt


def relative_error(fast, reference) -> float:
  fast, reference = np.asarray(fast, np.float64), np.asarray(reference, np.float64)
  scale = np.max(np.abs(reference))
  return float(np.max(np.abs(fast - reference)) / scale) if scale > 0 else float(
      np.max(np.abs(fast)))


def compare_with_neural_tangents(network: ntk.NTKNetwork, params: ntk.Params,
                                 images: np.ndarray, labels: np.ndarray, num_classes: int,
                                 *, implementation: int = 2) -> dict:
  """The three relative errors (module docstring) on `images` (uint8 NHWC)."""
  nt = _neural_tangents()
  x = ntk.flatten_images(images)
  n = x.shape[0]
  f = lambda p, inputs: ntk.summed_output(network, p, inputs)[:, None]
  kernel_fn = nt.empirical_ntk_fn(f, trace_axes=(), implementation=implementation)
  kernel = np.asarray(jax.jit(kernel_fn)(x, None, params)).reshape(n, n)
  phi = jax.jit(ntk.per_example_features, static_argnums=0)(network, params, x)
  gram = np.asarray(phi @ phi.T)
  acts, deltas = jax.jit(ntk.activations_and_deltas, static_argnums=0)(network, params, x)
  fast_norms = np.asarray(ntk.sq_feature_norms(acts, deltas))
  fast_sum = ntk.private_embedding_sum(network, params, images, labels, num_classes,
                                       chunk_size=min(256, n))
  # The fast path divides by the norm with a safety margin; the explicit one by
  # the bare float64 norm.
  fast_mean = (np.asarray(ntk.embedding_to_matrix(fast_sum), np.float64) / n
               * (1 + ntk.NORM_SAFETY_MARGIN))
  exact_mean = ntk.exact_labelled_embedding(network, params, np.asarray(x), labels, num_classes)
  return {
      "gram_vs_neural_tangents_ntk": relative_error(gram, kernel),
      "fast_norms_vs_neural_tangents_diagonal": relative_error(fast_norms, np.diag(kernel)),
      "fast_mean_embedding_vs_explicit_features": relative_error(fast_mean, exact_mean),
  }
