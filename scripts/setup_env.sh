#!/usr/bin/env bash
# Create .venv with everything dstrain needs, on a fresh machine. Idempotent: a second run is fast.
# torch is installed first and pinned so that no other package can pull a multi-GB CUDA build
# (override TORCH_SPEC on a GPU cluster, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.dstrain-installed
want="$(sha256sum requirements.txt | cut -d' ' -f1) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q $TORCH_SPEC
.venv/bin/python -m pip install -q -r requirements.txt
# DeepSpeed's CPU all-reduce op compiles at its first use (about a minute). Build it here, so no run pays for it
# and no signal meant for a run can kill the compiler (seen: a Slurm time-limit USR1 killed ninja, the run failed).
DS_ACCELERATOR=cpu .venv/bin/python -c "import dstrain.runtime; from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load()" >/dev/null \
  || echo "dstrain: WARNING: could not prebuild DeepSpeed's CPU comm op; the first CPU run builds it" >&2
echo "$want" > "$stamp"
echo "dstrain: environment ready in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
