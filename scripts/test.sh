#!/usr/bin/env bash
# The test suite, on a fresh machine: install what is needed, then pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Slurm + munge from Debian for the multi-node tests (root and apt needed; skipped loudly otherwise).
bash scripts/install_slurm.sh || echo "dstrain: WARNING: could not install Slurm; tests/slurm will be skipped" >&2
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
