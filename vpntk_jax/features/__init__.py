"""Feature maps: the per-example features whose labelled mean gets released.

A feature map here is an object with
  * `norm_bound`: every per-example feature has L2 norm <= this (the
    sensitivity of the release rests on it);
  * `private_sum(images, labels, num_classes, progress=None)`: the labelled sum
    sum_i phi(x_i) y_i^T as a pytree whose leaves end in a class axis;
  * `synthetic_mean(x_grouped)`: the labelled mean of a class-grouped batch
    (C, n, D) of images in [0, 1], differentiable in x.
Methods differ only in their feature map (DP-NTK: NTK features; DP-MERF:
random Fourier features).
"""

from vpntk_jax.features.ntk_map import NTKFeatureMap
from vpntk_jax.features.rff import RFFFeatureMap

__all__ = ["NTKFeatureMap", "RFFFeatureMap"]
