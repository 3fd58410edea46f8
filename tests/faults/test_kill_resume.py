"""Cases 1-3 and 6 of the matrix: a rank SIGKILLed mid-step, then the resumed run killed mid-save, then resumed
again to the end while an old checkpoint cannot be deleted. One chain of three real 2-rank jobs on the same
run folder:

    job A  rank 1 SIGKILLs itself mid-way through step 5 (after the step-4 checkpoint)    -> case 2
    job B  --resume auto from step 4; rank 0 is SIGKILLed just before it writes the
           COMPLETE marker of step 6 (every other file of the checkpoint is written)       -> case 3
    job C  --resume auto again: step 6 is not taken, step 4 is; step 6 is saved again;
           runs to the end, with --keep_last 2 and step 2 undeletable (injected
           PermissionError on rank 0)                                                       -> cases 1, 3, 6

and the result is compared with the uninterrupted reference run, step for step and sample for sample.
"""

from __future__ import annotations

import json

import pytest

from dstrain.checkpoint import Checkpointer, verify
from tests.faults.conftest import EXIT_BOUND_S, STEPS, Job, distill_args, scalars, trace

ACCUM = 2  # grad_accum_steps of distill_args


@pytest.fixture(scope="module")
def chain(tmp_path_factory, tiny_teacher_dir, tiny_shards_dir):
    base = tmp_path_factory.mktemp("kill_chain")
    out, tr = base / "run", base / "trace"
    args = distill_args(tiny_teacher_dir, tiny_shards_dir, out)
    res = {"out": out, "trace": tr, "base": base}

    a = Job(args, base / "a.log", inject={"rank": 1, "kill_at_micro": 4 * ACCUM + 2, "trace": str(tr / "a"),
                                           "note": str(base / "a")}, fresh=True)  # the launcher ends rank 0
    a.wait_for(lambda: (base / "a" / "killed.json").is_file(), "rank 1 to be killed")
    res["a_rc"] = a.wait(timeout=EXIT_BOUND_S + 60)
    res["a_killed_at"] = json.loads((base / "a" / "killed.json").read_text())["time"]
    res["a_ended_at"], res["a_ranks_gone"], res["a_log"] = a.ended_at, a.ranks_gone(), a.output()
    res["a_ckpts"] = {p.name: verify(p) for p in (out / "checkpoints").glob("step-*")}
    res["a_latest"] = (out / "checkpoints" / "latest").read_text()

    b = Job(args, base / "b.log", inject={"rank": 0, "kill_on_replace": "step-00000006/COMPLETE",
                                           "trace": str(tr / "b"), "note": str(base / "b")})
    res["b_rc"] = b.wait(timeout=600)
    res["b_log"] = b.output()
    step6 = out / "checkpoints" / "step-00000006"
    res["b_step6_files"] = sorted(p.name for p in step6.iterdir()) if step6.is_dir() else None
    res["b_step6_verify"] = verify(step6)
    res["b_latest"] = (out / "checkpoints" / "latest").read_text()

    # keep_last is not part of the run's identity: changing it on relaunch is allowed
    c_args = distill_args(tiny_teacher_dir, tiny_shards_dir, out, keep_last=2)
    c = Job(c_args, base / "c.log", inject={"trace": str(tr / "c"), "rank": 0, "rmtree_fails": "step-00000002"})
    res["c_rc"] = c.wait(timeout=600)
    res["c_log"] = c.output()
    return res


def test_case2_rank_sigkill_mid_step_every_rank_exits_bounded(chain):
    """One rank SIGKILLed mid-step: the job exits non-zero soon after, no rank is left running, the newest
    complete checkpoint (step 4) is intact and named by `latest`."""
    assert chain["a_rc"] != 0, chain["a_log"][-3000:]
    assert "[fault injection] rank 1: SIGKILL at micro-step 10 (optimizer step 5)" in chain["a_log"]
    took = chain["a_ended_at"] - chain["a_killed_at"]
    assert took < EXIT_BOUND_S, f"job took {took:.0f}s to exit after the kill"
    assert chain["a_ranks_gone"]
    assert chain["a_latest"] == "step-00000004"
    assert chain["a_ckpts"] == {"step-00000002": None, "step-00000004": None}


def test_case3_killed_during_save_is_never_taken_and_is_saved_again(chain):
    """Killed while saving step 6: the folder is left without its COMPLETE marker, `latest` still names
    step 4; the relaunch says why it skips step 6, resumes from step 4 and saves step 6 again, completely."""
    assert chain["b_rc"] != 0
    assert "resumed from" in chain["b_log"] and "step-00000004 at step 4" in chain["b_log"]
    assert "[fault injection] rank 0: SIGKILL before os.replace" in chain["b_log"]
    files = chain["b_step6_files"]
    assert files is not None and "COMPLETE" not in files and any(f.startswith("dstrain_rank") for f in files)
    assert chain["b_step6_verify"] == "no COMPLETE marker (the save did not finish)"
    assert chain["b_latest"] == "step-00000004"
    c_log = chain["c_log"]
    assert chain["c_rc"] == 0, c_log[-3000:]
    assert "step-00000006 is not usable: no COMPLETE marker" in c_log
    assert "step-00000004 at step 4" in c_log
    assert "checkpoints/step-00000006 saved" in c_log  # the same step saved again (rotated away later: case 6)
    ck = chain["out"] / "checkpoints"
    assert verify(ck / f"step-{STEPS:08d}") is None and (ck / "latest").read_text() == f"step-{STEPS:08d}"
    assert Checkpointer(chain["out"], 10, 0, 2).find_resume() == f"step-{STEPS:08d}"


def test_case6_keep_last_k_with_a_failed_deletion(chain):
    """keep_last 2 over job C's saves (steps 6, 8, 10) while deleting step 2 fails every time: each failure is
    logged and the run finishes; the last 2 complete checkpoints stay, every other one is gone except the
    undeletable one, which lost its marker first and so is never resumed from."""
    c_log = chain["c_log"]
    assert chain["c_rc"] == 0
    assert c_log.count("could not delete old checkpoint") == 3 and "Permission denied (injected)" in c_log
    ck = chain["out"] / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-00000002", f"step-{STEPS - 2:08d}", f"step-{STEPS:08d}"]
    assert verify(ck / f"step-{STEPS - 2:08d}") is None and verify(ck / f"step-{STEPS:08d}") is None
    assert verify(ck / "step-00000002") == "no COMPLETE marker (the save did not finish)"


def test_case1_resumed_run_matches_uninterrupted_bitwise_and_sees_each_sample_once(chain, reference_run):
    """After two crashes, the run's logged losses, learning rates, grad norms and skipped-step counts equal
    the uninterrupted run's exactly (fp32, CPU), and the samples each rank trained on at each step are the
    same: the steps that counted (A up to its checkpoint, then C) saw every sample of the reference once
    and no other."""
    ref, ref_trace = reference_run
    a, b = scalars(ref), scalars(chain["out"])
    tags = [t for t in a if t.startswith("train/")]
    assert {"train/loss_total", "train/lr", "train/skipped_steps", "train/grad_norm"} <= set(tags)
    for tag in tags:
        assert sorted(b[tag]) == list(range(1, STEPS + 1)), tag
        assert b[tag] == a[tag], tag  # exact equality, every step
    got = trace(chain["trace"] / "a")
    kept = {k: v for k, v in got.items() if k[1] <= 4}  # A's steps after its last checkpoint are replayed
    kept.update(trace(chain["trace"] / "c"))
    want = trace(ref_trace)
    assert sorted(kept) == sorted(want) == [(r, s) for r in (0, 1) for s in range(1, STEPS + 1)]
    assert kept == want
    samples = [fp for v in kept.values() for fp in v]
    assert len(samples) == STEPS * 16
    m_ref, m = (json.loads((p / "metrics.json").read_text()) for p in (ref, chain["out"]))
    assert m["samples_seen"] == m_ref["samples_seen"] == STEPS * 16 and m["tokens_seen"] == m_ref["tokens_seen"]
    assert m["student_mlm_loss"] == m_ref["student_mlm_loss"]
