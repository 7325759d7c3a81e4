"""Public models that travel with the package, each checked against its sha256 list.

`vpntk_jax/public_models/NAME/` holds a public diffusion model directory
(`public.diffusion_model`'s layout) and SHA256SUMS, one line per file
("<sha256>  <relative path>"), written when the model is shipped
(`python -m experiments.public_diffusion --ship`). Loading a shipped model
re-hashes every file and refuses one that differs or is missing, so a run
never starts from weights other than the recorded ones.
"""

from __future__ import annotations

import os
import shutil

from vpntk_jax import io_utils
from vpntk_jax.errors import ConfigError

SHIPPED_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "public_models")
SUMS = "SHA256SUMS"
# The 30-class public pool (FashionMNIST's public part, MNIST, sklearn digits), 28x28x1.
POOL_MODEL = "fashion_pool"


PREFIX = "shipped:"


def shipped_path(name: str) -> str:
  return os.path.join(SHIPPED_ROOT, name)


def names() -> list[str]:
  if not os.path.isdir(SHIPPED_ROOT):
    return []
  return sorted(n for n in os.listdir(SHIPPED_ROOT)
                if os.path.isfile(os.path.join(SHIPPED_ROOT, n, SUMS)))


def resolve(path: str) -> str:
  """A model directory: `shipped:NAME` is the package's model NAME, checked against its
  SHA256SUMS; any other path is returned as it is."""
  if not path.startswith(PREFIX):
    return path
  name = path[len(PREFIX):]
  if name not in names():
    raise ConfigError(f"no shipped model {name!r}; the package ships "
                      f"{', '.join(PREFIX + n for n in names()) or 'none'}")
  return check(shipped_path(name))


def _files(root: str) -> list[str]:
  found = []
  for folder, _, names in os.walk(root):
    found += [os.path.relpath(os.path.join(folder, n), root) for n in names if n != SUMS]
  return sorted(found)


def sums(root: str) -> dict[str, str]:
  return {rel: io_utils.sha256_file(os.path.join(root, rel)) for rel in _files(root)}


def check(root: str) -> str:
  """`root` if its files are exactly those its SHA256SUMS lists, with those hashes."""
  listing = os.path.join(root, SUMS)
  if not os.path.isfile(listing):
    raise ConfigError(f"{root}: no {SUMS}; a shipped model is checked against it")
  expected = {}
  with open(listing) as f:
    for line in f:
      digest, _, rel = line.rstrip("\n").partition("  ")
      expected[rel] = digest
  actual = sums(root)
  if actual != expected:
    differ = sorted(k for k in expected.keys() | actual.keys()
                    if expected.get(k) != actual.get(k))
    raise ConfigError(f"the shipped model in {root} does not match its {SUMS} "
                      f"({', '.join(differ[:5])}); reinstall the package")
  return root


def ship(source: str, name: str) -> str:
  """Copies the model directory `source` (checked by the caller: loaded once) to the
  package as `name`, with its SHA256SUMS."""
  target = shipped_path(name)
  staging = target + ".partial"
  shutil.rmtree(staging, ignore_errors=True)
  shutil.copytree(source, staging, ignore=shutil.ignore_patterns("pretrain_checkpoints"))
  with open(os.path.join(staging, SUMS), "w") as f:
    f.writelines(f"{digest}  {rel}\n" for rel, digest in sums(staging).items())
  if os.path.exists(target):
    shutil.rmtree(target)
  os.replace(staging, target)
  return target
