"""Fixtures for the Slurm template tests: a real local multi-node cluster and a tiny teacher.

    slurm_cluster   2 nodes x 2 CPUs x 2 fake GPUs (tests/slurm/cluster.py), up for the session,
                    torn down at the end (only what it started)
    tiny_teacher    a 4-layer, 32-wide BertForMaskedLM on the tiny tokenizer (random weights: the
                    student still has a loss to minimise, matching it)

Slurm is installed with scripts/install_slurm.sh when it is missing and we are root (CI). Where it
cannot be installed, every test module here skips loudly at collection (see SLURM_SKIP).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.slurm.cluster import LocalSlurmCluster, slurm_unavailable_reason

SLURM_SKIP = slurm_unavailable_reason()
if SLURM_SKIP:
    SLURM_SKIP = "SLURM TESTS NOT RUN: " + SLURM_SKIP


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    # A short root: slurmd's spool paths and unix sockets must stay under the 108-byte socket limit.
    root = Path(f"/tmp/dstrain-slurm-{os.getpid()}")
    cluster = LocalSlurmCluster(root, nodes=2, cpus_per_node=2, gpus_per_node=2)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)  # configs and daemon logs; job logs live in each test's tmp_path


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    import torch

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("slurm_teacher") / "teacher"
    BertForMaskedLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out
