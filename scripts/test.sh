#!/usr/bin/env bash
# The test suite, on a fresh machine: install what is needed, then pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Slurm + munge from Debian for the multi-node tests (root and apt needed; skipped loudly otherwise).
bash scripts/install_slurm.sh || echo "dstrain: WARNING: could not install Slurm; tests/slurm will be skipped" >&2
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# 3 workers on 2 cores: one worker kept the cores about half busy (launchers, rendezvous, timeouts, Slurm
# scheduling wait); tests that share an expensive fixture run on one worker (tests/conftest.py).
exec .venv/bin/python -m pytest -n "${DSTRAIN_TEST_WORKERS:-3}" --dist loadfile "$@"
