#!/usr/bin/env bash
# The main job on the embedded corpus, on a fresh machine: install, then run the miniature DistilBERT
# study into runs/study (or the folder given as first argument). Extra args go to `study`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
OUT=${1:-runs/study}; shift || true
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python dstrain/cli.py study --out_dir "$OUT" "$@"
