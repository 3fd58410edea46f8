"""Issue 13, classes 3 and 4: an output never overwrites an input or someone else's folder, and one run at a time
writes a folder (dstrain/outputs.py). In-process calls where the refusal comes before any work; two real
concurrent launches for the lock."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dstrain.config import UserError
from tests.faults.conftest import Job, distill_args
from tests.launch import ROOT, cpu_env


def _tree(d: Path) -> dict[str, int]:
    """Every file under d with its size and mtime: what must stay untouched."""
    return {str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()}


def test_every_command_refuses_an_output_that_is_inside_or_holds_an_input(tmp_path, tiny_teacher_dir, tiny_shards_dir,
                                                                         tiny_tokenizer_dir):
    from data_prep.build_shards import build_shards
    from data_prep.train_tokenizer import train_tokenizer
    from dstrain.benchmark.run import benchmark
    from dstrain.finetune.run import finetune
    from dstrain.init_student import init_student
    from dstrain.train.commands import distill, pretrain

    run = tmp_path / "run"  # the teacher lives where distill would export its student
    shutil.copytree(tiny_teacher_dir, run / "student")
    teacher = run / "student"
    before = _tree(run)
    with pytest.raises(UserError, match=r"--out_dir .*run contains the input --teacher .*run/student: an output must never"):
        distill(teacher=str(teacher), data=str(tiny_shards_dir), out_dir=str(run), ds_config="ds_configs/cpu_zero2.json")
    with pytest.raises(UserError, match=r"is inside the input --data"):
        pretrain(data=str(tiny_shards_dir), out_dir=str(tiny_shards_dir / "run"), ds_config="ds_configs/cpu_zero2.json")
    with pytest.raises(UserError, match=r"--out_dir .*run/student is the input --teacher"):
        init_student(teacher=str(teacher), out_dir=str(teacher), overwrite=True)
    alias = tmp_path / "alias"  # the same folder through a symlink
    alias.symlink_to(teacher)
    with pytest.raises(UserError, match=r"--out_dir .*alias is the input --teacher"):
        init_student(teacher=str(teacher), out_dir=str(alias), overwrite=True)
    with pytest.raises(UserError, match=r"is inside the input --model"):
        finetune(model=str(teacher), task="shakespeare_genre", out_dir=str(teacher / "ft"), overwrite=True)
    with pytest.raises(UserError, match=r"--out_dir .* is the input --tokenizer"):
        build_shards(tokenizer=str(tiny_tokenizer_dir), out_dir=str(tiny_tokenizer_dir), overwrite=True)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("fair is foul and foul is fair\n" * 20)
    with pytest.raises(UserError, match=r"--out_dir .*corpus contains the input --inputs .*a.txt"):
        build_shards(tokenizer=str(tiny_tokenizer_dir), inputs=str(corpus / "*.txt"), out_dir=str(corpus))
    with pytest.raises(UserError, match=r"contains the input --inputs .*a.txt"):
        train_tokenizer(inputs=str(corpus / "a.txt"), out_dir=str(corpus), overwrite=True, vocab_size=100)
    with pytest.raises(UserError, match=r"is the input --models"):
        benchmark(models=str(teacher), out_dir=str(teacher))
    assert _tree(run) == before and (corpus / "a.txt").is_file() and len(list(corpus.iterdir())) == 1


def test_a_folder_dstrain_did_not_write_is_refused_and_overwrite_replaces_only_its_own(tmp_path, tiny_teacher_dir):
    from dstrain.init_student import init_student
    from dstrain.outputs import read_marker

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"--out_dir .*mine: not empty and not written by dstrain \(it holds notes.txt\)"):
        init_student(teacher=str(tiny_teacher_dir), out_dir=str(mine), overwrite=True)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]

    s = tmp_path / "student"
    init_student(teacher=str(tiny_teacher_dir), out_dir=str(s))
    m = read_marker(s)
    assert m["command"] == "init_student" and "model.safetensors" in m["files"] and "dstrain_init.json" in m["files"]
    init_student(teacher=str(tiny_teacher_dir), out_dir=str(s), overwrite=True, seed=1)  # its own folder: replaced
    assert json.loads((s / "dstrain_init.json").read_text())["layer_map"] == [0, 2]
    (s / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"holds files init_student did not write \(notes.txt\)"):
        init_student(teacher=str(tiny_teacher_dir), out_dir=str(s), overwrite=True)
    assert (s / "notes.txt").read_text() == "mine" and (s / "model.safetensors").is_file()


def _holder_script(out: Path, command: str) -> list[str]:
    code = ("import sys, time; from dstrain.outputs import RunLock; "
            f"lock = RunLock.acquire({str(out)!r}, {command!r}); print('held', flush=True); time.sleep(600)")
    return [sys.executable, "-c", code]


def test_lock_names_its_holder_and_a_dead_holder_is_taken_over(tmp_path, caplog):
    """Real processes: a live holder refuses a second writer; one killed with SIGKILL (no clean-up) leaves a
    lock file that the next run takes over, saying so."""
    from dstrain.outputs import LOCK, RunLock, check_out_dir

    out = tmp_path / "run"
    holder = subprocess.Popen(_holder_script(out, "pretrain"), cwd=ROOT, env=cpu_env(PYTHONPATH=str(ROOT)),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"--out_dir .*run: another run is writing this folder \(`pretrain` pid "
                                            rf"{holder.pid} on host {os.uname().nodename}, started .*\)\. One run per folder"):
            RunLock.acquire(out, "pretrain")
        # the folder checks made before the lock name the writer too, not the half-written files it has open
        # (seen in CI: a second launch called the holder's `.dstrain.json.tmp-PID` a foreign file)
        (out / f".dstrain.json.tmp-{holder.pid}").write_text("{")
        with pytest.raises(UserError, match=rf"another run is writing this folder \(`pretrain` pid {holder.pid}"):
            check_out_dir(out, "pretrain")
        (out / f".dstrain.json.tmp-{holder.pid}").unlink()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((out / LOCK).read_text())["pid"] == holder.pid  # left behind by the SIGKILL
    with caplog.at_level("WARNING", logger="dstrain"):
        lock = RunLock.acquire(out, "pretrain")
    assert f"taking over the lock of `pretrain` pid {holder.pid}" in caplog.text
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (out / LOCK).exists()


def test_a_marker_half_written_by_a_killed_run_is_not_a_foreign_file(tmp_path):
    """A run killed while writing the folder's marker (right after taking the lock) leaves the lock and
    `.dstrain.json.tmp-PID`: the next launch accepts the folder, takes over the lock and removes the debris
    (it used to call the folder "not written by dstrain")."""
    from dstrain.outputs import LOCK, MARKER, RunLock, check_out_dir

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / LOCK).write_text(json.dumps({"pid": pid, "host": os.uname().nodename, "command": "distill"}))
    (out / f"{MARKER}.tmp-{pid}").write_text('{"command": "dis')
    assert check_out_dir(out, "distill") is None
    lock = RunLock.acquire(out, "distill")
    assert sorted(p.name for p in out.iterdir()) == sorted([LOCK, MARKER])
    assert json.loads((out / MARKER).read_text())["command"] == "distill"
    lock.release()


def test_two_concurrent_launches_into_one_out_dir(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    """A runs (stopped with SIGSTOP while it holds the folder); B, a 2-rank launch into the same folder, is refused
    on every rank naming A, and changes nothing; A is killed; C takes over A's stale lock and finishes. The finished
    run is then not init_student's to overwrite."""
    from dstrain.init_student import init_student

    out = tmp_path / "run"
    args = distill_args(tiny_teacher_dir, tiny_shards_dir, out)
    a = Job(args, tmp_path / "a.log", ranks=1)
    lock = out / ".dstrain.lock"
    a.wait_for(lambda: lock.is_file() and lock.read_text().strip() != "", "A's lock", timeout=900)
    os.kill(a.proc.pids[0], signal.SIGSTOP)
    try:
        before = _tree(out)
        b = Job(args, tmp_path / "b.log", ranks=2)
        assert b.wait(timeout=600) == 2, b.tail()
        log = b.output()
        assert log.count(f"dstrain: error: --out_dir {out}: another run is writing this folder (`distill` pid "
                         f"{a.proc.pids[0]} on host") == 2, log[-3000:]  # rank 0 and rank 1
        assert "Traceback" not in log
        assert _tree(out) == before
    finally:
        a.kill()
    c = Job(args, tmp_path / "c.log", ranks=1)
    assert c.wait(timeout=600) == 0, c.tail()
    assert f"taking over the lock of `distill` pid {a.proc.pids[0]}" in c.output()
    assert json.loads((out / "metrics.json").read_text())["step"] == 10 and not lock.exists()

    finished = _tree(out)
    with pytest.raises(UserError, match=r"holds the output of `distill`, not of `init_student`"):
        init_student(teacher=str(tiny_teacher_dir), out_dir=str(out), overwrite=True)
    assert _tree(out) == finished
