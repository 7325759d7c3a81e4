#!/usr/bin/env bash
# The shipped public diffusion models at their full recipe (8,000 steps), on a GPU, each
# judged by the pool classifier; a second device call beside benchmarks/gpu_suite.sh
# (docs/gpu.md), about 6 minutes on one H100 by the CPU's step count (unmeasured there):
#
#   bash benchmarks/gpu_prepare.sh        # here, once: .gpu/ (wheels, data, classifier)
#   run(command="bash experiments/gpu_public_diffusion.sh", carry=[".gpu"], timeout_s=600)
#
# For each model of experiments.public_diffusion.MODELS (fashion_pool, then
# fashion_pool_no_ankle_boot), under GPU_DIFFUSION_CAP seconds each (default 240): trains
# it in $OUT/NAME (resumable: a capped model continues in a later call that carries the
# returned $OUT/NAME.partial back into data/public_diffusion), then
# experiments.public_diffusion_eval scores 100 samples per class into $OUT/eval.json with
# grids. Back here: copy $OUT/NAME to data/public_diffusion/NAME and ship it with
# `python -m experiments.public_diffusion --model NAME --ship`.
#   GPU_DIFFUSION_STEPS=N   fewer steps (the smoke test here: GPU_DIFFUSION_STEPS=2)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
STEPS=${GPU_DIFFUSION_STEPS:-8000}
CAP=${GPU_DIFFUSION_CAP:-240}
PER_CLASS=${GPU_DIFFUSION_PER_CLASS:-100}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
# The suite's setup: the carried wheels, the split and the pool.
GPU_SUITE_SETUP_ONLY=1 OUT="$OUT/setup" bash benchmarks/gpu_suite.sh || exit 1
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
CLASSIFIER=public/pool28_classifier
[ -d "$CLASSIFIER" ] || CLASSIFIER=.gpu/public/pool28_classifier
status=0
for name in fashion_pool fashion_pool_no_ankle_boot; do
  SECONDS=0
  timeout --kill-after=15 "$CAP" "$PYTHON" -m experiments.public_diffusion --model "$name" \
    --steps "$STEPS" --out "$OUT/$name" --fresh
  rc=$?
  echo "{\"part\": \"train $name\", \"rc\": $rc, \"seconds\": $SECONDS, \"steps\": $STEPS}"
  if [ "$rc" = 0 ]; then
    "$PYTHON" -m experiments.public_diffusion_eval --model "$OUT/$name" \
      --classifier "$CLASSIFIER" --per-class "$PER_CLASS" --name "${name}_step$STEPS" \
      --json "$OUT/eval.json" || status=1
  else
    status=1
  fi
done
exit "$status"
