"""Checkpoint completeness, fallback and retention rules on real folders (no engine needed for these)."""

from __future__ import annotations

import json
import logging

import pytest

from dstrain.checkpoint import Checkpointer, mark_complete, step_tag, verify
from dstrain.config import UserError


def _ckpt(root, step, complete=True):
    d = root / "checkpoints" / step_tag(step)
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x" * (100 + step))
    (d / "dstrain_rank000.pt").write_bytes(b"y" * 10)
    if complete:
        mark_complete(d, step)
    return d


def test_verify_detects_incomplete_truncated_and_deleted(tmp_path):
    d = _ckpt(tmp_path, 1)
    assert verify(d) is None
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x" * 5)
    assert "truncated" in verify(d)
    d2 = _ckpt(tmp_path, 2)
    (d2 / "dstrain_rank000.pt").unlink()
    assert "missing" in verify(d2)
    assert "no COMPLETE marker" in verify(_ckpt(tmp_path, 3, complete=False))
    d4 = _ckpt(tmp_path, 4)
    (d4 / "COMPLETE").write_text("{not json")
    assert "unreadable" in verify(d4)


def test_resume_takes_newest_complete_and_logs_fallbacks(tmp_path, caplog):
    _ckpt(tmp_path, 10)
    _ckpt(tmp_path, 20)
    _ckpt(tmp_path, 30, complete=False)  # crashed mid-save
    (tmp_path / "checkpoints" / "latest").write_text("garbage\x00tag")
    c = Checkpointer(tmp_path, keep_last=3, rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="dstrain"):
        assert c.find_resume() == step_tag(20)
    text = caplog.text
    assert "step-00000030 is not usable: no COMPLETE marker" in text and "latest" in text
    # truncate the newest complete one: falls back to the previous complete one
    (tmp_path / "checkpoints" / step_tag(20) / "dstrain_rank000.pt").write_bytes(b"")
    assert c.find_resume() == step_tag(10)


def test_no_checkpoint_is_none_but_only_broken_ones_is_an_error(tmp_path):
    c = Checkpointer(tmp_path, keep_last=3, rank=0, world_size=1)
    assert c.find_resume() is None
    _ckpt(tmp_path, 5, complete=False)
    with pytest.raises(UserError, match="none is complete; refusing to silently start over"):
        c.find_resume()


def test_rotation_keeps_last_k_complete(tmp_path):
    for s in (1, 2, 3, 4):
        _ckpt(tmp_path, s)
    _ckpt(tmp_path, 5, complete=False)  # newer than the newest complete one: a save in progress, kept
    c = Checkpointer(tmp_path, keep_last=2, rank=0, world_size=1)
    c._rotate()
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == [step_tag(3), step_tag(4), step_tag(5)]
    assert json.loads((tmp_path / "checkpoints" / step_tag(4) / "COMPLETE").read_text())["step"] == 4


def test_resume_refuses_another_teacher_or_tokenizer(caplog):
    from dstrain.checkpoint import check_resume_compatible

    saved = {"teacher_fingerprint": "t1", "tokenizer_fingerprint": "k1", "config_hash": "a", "config": {"lr": 1.0}}
    with pytest.raises(UserError, match="different teacher .*Resume with the same --teacher"):
        check_resume_compatible(saved, dict(saved, teacher_fingerprint="t2"), "ck")
    with pytest.raises(UserError, match="different tokenizer"):
        check_resume_compatible(saved, dict(saved, tokenizer_fingerprint="k2"), "ck")
    with caplog.at_level(logging.WARNING, logger="dstrain"):
        check_resume_compatible(saved, dict(saved, config_hash="b", config={"lr": 2.0}), "ck")
    assert "changed settings: lr" in caplog.text
