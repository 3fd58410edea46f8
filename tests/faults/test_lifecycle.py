"""Issue #13 items 1 and 8: a finished run is final and relaunching it is safe, and metrics.json is complete
after a resume. One chain of real 2-rank jobs on one run folder (the session fixture `lifecycle_chain` in
conftest.py, shared with test_trust.py), each relaunch checked:

    A  preempted at its last step (the trainer's own DSTRAIN_FAULT_SIGNAL_AT_STEP: SIGUSR1 to one rank)
    B  the same command: resumes at the last step, keeps the complete final checkpoint (never deleted to be
       saved again), evaluates and exports; the teacher's metrics come from the checkpoint
    C  the same command on the finished run: says so, exits 0, writes nothing
    D  another --lr: refused (exit 2) naming the setting; config.json still describes the student
    E  a larger --max_steps: refused, naming --continue_finished
    F  a larger --max_steps with --continue_finished true: trains on and replaces student/ and metrics.json
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from dstrain.checkpoint import verify
from dstrain.config import UserError, config_to_dict
from dstrain.train.config import DistillConfig, finished_decision
from tests.faults.conftest import LIFECYCLE_STEPS as LAST
from tests.faults.conftest import copy_run, snapshot, strict_json
from tests.launch import ROOT, cpu_env


def test_preempted_at_last_step_finishes_its_export_on_relaunch(lifecycle_chain):
    """A stops at its last step with a checkpoint; B (before: UnboundLocalError loss_terms, after deleting the
    complete final checkpoint to save it again) exports from that very checkpoint and exits 0."""
    assert lifecycle_chain["a_preempted"]["step"] == LAST and not lifecycle_chain["a_student"]
    assert lifecycle_chain["b_rc"] == 0, lifecycle_chain["b_log"][-4000:]
    assert "Traceback" not in lifecycle_chain["b_log"]
    assert f"at step {LAST}" in lifecycle_chain["b_log"]
    out = lifecycle_chain["out"]
    # the final checkpoint was kept, never rewritten (a kill during a re-save would have left none)
    assert lifecycle_chain["b_final_marker_mtime"] == lifecycle_chain["final_marker_mtime"]
    assert verify(out / "checkpoints" / f"step-{LAST:08d}") is None
    m = lifecycle_chain["metrics_before_f"]
    assert m["step"] == LAST and m["checkpoint"] == f"step-{LAST:08d}" and (out / "student").is_dir()
    assert math.isfinite(m["train_loss"]) and math.isfinite(m["student_mlm_loss"])


def test_metrics_complete_after_a_resume_and_strict_json(lifecycle_chain):
    """Item 8: the resumed run B never evaluated the teacher (it started at step 4), yet metrics.json has the
    teacher's held-out loss and accuracy, carried in the checkpoint; and the file is strict JSON."""
    m = lifecycle_chain["metrics_before_f"]
    for k in ("teacher_mlm_loss", "teacher_mlm_acc", "student_mlm_loss", "student_mlm_acc", "samples_seen"):
        assert isinstance(m.get(k), (int, float)) and math.isfinite(m[k]), k
    assert m["samples_seen"] == LAST * 16


def test_same_command_on_a_finished_run_says_so_exits_0_writes_nothing(lifecycle_chain):
    assert lifecycle_chain["c_rc"] == 0, lifecycle_chain["c_log"][-3000:]
    assert f"already finished at step {LAST}" in lifecycle_chain["c_log"]
    assert lifecycle_chain["c_after"] == lifecycle_chain["done"]


def test_other_settings_on_a_finished_run_are_refused_and_config_json_kept(lifecycle_chain):
    log = lifecycle_chain["d_log"]
    assert lifecycle_chain["d_rc"] == 2, log[-3000:]
    assert "finished at step 4" in log and "--lr 0.003 -> 0.001" in log and "Traceback" not in log
    assert lifecycle_chain["d_after"] == lifecycle_chain["done"]  # config.json, student/, metrics.json, checkpoints: untouched


def test_continuing_a_finished_run_is_an_explicit_choice(lifecycle_chain):
    log = lifecycle_chain["e_log"]
    assert lifecycle_chain["e_rc"] == 2, log[-3000:]
    assert f"--max_steps {LAST + 2} would continue it" in log and "--continue_finished true" in log
    assert lifecycle_chain["e_after"] == lifecycle_chain["done"]  # student/ and metrics.json untouched
    assert lifecycle_chain["f_rc"] == 0, lifecycle_chain["f_log"][-3000:]
    assert "--continue_finished: continuing the finished run" in lifecycle_chain["f_log"]
    out = lifecycle_chain["out"]
    m = strict_json(out / "metrics.json")
    assert m["step"] == LAST + 2 and m["checkpoint"] == f"step-{LAST + 2:08d}"
    assert json.loads((out / "config.json").read_text())["max_steps"] == LAST + 2
    assert m["teacher_mlm_loss"] == lifecycle_chain["metrics_before_f"]["teacher_mlm_loss"]


def test_finished_decision_compares_what_config_json_holds(tmp_path):
    """The decision itself, on the files a finished run leaves (config.json holds the derived batch sizes, so a
    command that leaves them to be derived is still the same command)."""
    def launch(**kw):  # the decision's arguments for a launch on 2 ranks
        kw = {"max_steps": LAST, **kw}
        return DistillConfig(teacher="T", data="S", out_dir=str(tmp_path), micro_batch_size_per_gpu=4,
                             grad_accum_steps=2, **kw), tmp_path, 2

    assert finished_decision(*launch()) is None  # nothing there yet
    cfg = launch()[0]
    (tmp_path / "config.json").write_text(json.dumps({**config_to_dict(cfg), "global_batch_size": 16, "world_size": 2}))
    (tmp_path / "metrics.json").write_text(json.dumps({"step": LAST}))
    assert finished_decision(*launch()) == "finished"
    assert finished_decision(*launch(save_every=1, keep_last=1, resume="true")) == "finished"
    with pytest.raises(UserError, match=r"--lr 0.0005 -> 0.001\); nothing was changed"):
        finished_decision(*launch(lr=1e-3))
    with pytest.raises(UserError, match="--continue_finished true"):
        finished_decision(*launch(max_steps=LAST + 1))
    assert finished_decision(*launch(max_steps=LAST + 1, continue_finished=True)) == "continue"
    with pytest.raises(UserError, match="beyond --max_steps 1"):
        finished_decision(*launch(max_steps=1))


def test_a_finished_run_is_decided_before_torch_is_imported(lifecycle_chain, tmp_path):
    """C's decision in a rank of its own (rank 1 of 2, no process group): it says nothing, exits 0, and never
    imports torch, transformers or DeepSpeed, so a requeued finished job costs each rank a fraction of a second.
    The same rank with another --lr is refused the same way, without them either."""
    out = copy_run(lifecycle_chain["out"], tmp_path / "run")  # finished at LAST + 2 by launch F
    args = lifecycle_chain["args"]
    kwargs = {a[2:]: v for a, v in zip(args[1::2], args[2::2])}
    kwargs.update(out_dir=str(out), max_steps=LAST + 2)
    before = snapshot(out)
    code = ("import json, sys\nfrom dstrain.config import UserError\nfrom dstrain.train.commands import distill\n"
            "kw = json.loads(sys.argv[1])\ntry:\n    distill(**kw)\n    r = 'finished'\nexcept UserError as e:\n"
            "    r = str(e)\nprint(json.dumps([r, sorted({'torch', 'transformers', 'deepspeed'} & set(sys.modules))]))")
    for extra, expect in (({}, "finished"), ({"lr": 1e-3}, "--lr 0.003 -> 0.001")):
        proc = subprocess.run([sys.executable, "-c", code, json.dumps({**kwargs, **extra})], capture_output=True,
                              text=True, timeout=120, cwd=ROOT,
                              env=cpu_env(PYTHONPATH=str(ROOT), RANK="1", WORLD_SIZE="2", LOCAL_RANK="1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        result, heavy = json.loads(proc.stdout.strip().splitlines()[-1])
        assert expect in result and heavy == [], (result, heavy)
    assert snapshot(out) == before  # nothing written
