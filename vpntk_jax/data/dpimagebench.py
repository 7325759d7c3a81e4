"""A DPImageBench synthetic set as a data source: `dpimagebench:<path>`.

DPImageBench (github.com/2019ChenGong/DPImageBench) stores a method's synthetic
set as `<exp_path>/gen/gen.npz` with `x` float NCHW in [0, 1] and `y` integer
class indices of shape (N,) (what its eval.py reads, and `vpntk export` writes).
`<path>` is that file or the run folder holding gen/gen.npz; a file named
gen.npz and a folder with gen/gen.npz are recognised without the prefix
(`loader.load_dataset`). The set has one split, "train", so it can be scored
by `vpntk evaluate` or used wherever a source is taken (`--data`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from vpntk_jax.data.dataset import ImageDataset, make_dataset
from vpntk_jax.errors import DataError, MissingSplitError

PREFIX = "dpimagebench:"
GEN_NPZ = Path("gen") / "gen.npz"


def is_run_folder(path: Path) -> bool:
  """Whether `path` is a DPImageBench run folder (it holds gen/gen.npz)."""
  return path.is_dir() and (path / GEN_NPZ).is_file()


def gen_npz_path(path: Path) -> Path:
  """The gen.npz that `path` (the file, or a run folder) names; DataError if none."""
  if path.is_dir():
    if not (path / GEN_NPZ).is_file():
      raise DataError(f"{path} is not a DPImageBench run folder: it has no {GEN_NPZ}")
    return path / GEN_NPZ
  if not path.is_file():
    raise DataError(f"DPImageBench synthetic set not found: {path} (give gen.npz or the "
                    f"run folder that holds {GEN_NPZ})")
  return path


def nchw_to_nhwc(x: np.ndarray, name: str) -> np.ndarray:
  """DPImageBench's NCHW images (C = 1 or 3) as NHWC, values untouched."""
  if x.ndim != 4 or x.shape[1] not in (1, 3):
    raise DataError(f"{name}: x must be NCHW with 1 or 3 channels (DPImageBench's "
                    f"layout), got shape {x.shape}")
  return np.transpose(x, (0, 2, 3, 1))


def load_gen_npz(path: str | Path, split: str = "train", *, num_classes: int | None = None,
                 name: str | None = None) -> ImageDataset:
  """The synthetic set of a DPImageBench gen.npz (or its run folder) as uint8 NHWC.

  Pixels are round(x * 255): exactly the stored pixels for a file `vpntk export`
  wrote. Values outside [0, 1], NaNs and non-integer labels are DataErrors.
  """
  file = gen_npz_path(Path(path).expanduser())
  name = name or f"{PREFIX}{file}:{split}"
  if split != "train":
    raise MissingSplitError(f"{file} holds one synthetic set (split 'train'), no {split!r} "
                            f"split; give the real test set separately (--test-data SOURCE)")
  try:
    with np.load(file, allow_pickle=False) as z:
      missing = [k for k in ("x", "y") if k not in z.files]
      if missing:
        raise DataError(f"{file}: a DPImageBench gen.npz holds arrays 'x' and 'y'; "
                        f"{missing} missing (found {z.files})")
      x, y = z["x"], z["y"]
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f"cannot read {file} as a DPImageBench gen.npz: {e}") from None
  if not np.issubdtype(x.dtype, np.floating):
    raise DataError(f"{file}: x must be float in [0, 1] (DPImageBench's gen.npz), got "
                    f"dtype {x.dtype}")
  return make_dataset(nchw_to_nhwc(x, str(file)), y, num_classes, name=name)
