#!/usr/bin/env bash
# Issue #12's GPU check, as ONE device call (<= 8 minutes on an H100/H200): step throughput, MFU and peak
# memory (bf16, fp16; eager vs compiled; DeepSpeed vs a bare loop), the micro-step under
# torch.cuda.set_sync_debug_mode("error"), and the fp16 trainer paths. See perf/gpu_check.py.
#
#   OUT=/tmp/out bash perf/gpu_check.sh             # the GPU machine (its image: torch 2.11 CUDA 13)
#   OUT=/tmp/out bash perf/gpu_check.sh --dry-run   # CPU, tiny sizes (tests/benchmark/test_gpu_check.py)
#
# On a bare device machine it first installs the carried wheels (shared/device-wheels, see its README)
# into a private folder on PYTHONPATH, leaving the image's torch alone. Output: $OUT/gpu_check.{log,json}.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-$ROOT/runs/gpu_check}
PY=${PYTHON:-python3}
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then DRY=(--dry-run); shift; fi
mkdir -p "$OUT"
if [[ ${#DRY[@]} -eq 0 ]] && ! "$PY" -c "import deepspeed, fire, webdataset" 2>/dev/null; then
    WHEELS=${WHEEL_DIR:-}
    for d in "$ROOT/shared/device-wheels" "$ROOT/../shared/device-wheels" /work/shared/device-wheels; do
        if [[ -z "$WHEELS" && -d "$d" ]]; then WHEELS=$d; fi
    done
    [[ -n "$WHEELS" ]] || { echo "gpu_check: no device-wheels folder found; set WHEEL_DIR" >&2; exit 2; }
    SITE=${SITE:-/tmp/dstrain-site}
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH=$SITE:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if [[ ${#DRY[@]} -gt 0 ]]; then export DS_ACCELERATOR=cpu; fi
cd "$ROOT"
"$PY" -u perf/gpu_check.py --out "$OUT" "${DRY[@]}" "$@" 2>&1 | tee "$OUT/gpu_check.log"
