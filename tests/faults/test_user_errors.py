"""Issue 13, class 7: what the user can fix is one line on stderr and exit 2, never a traceback: damaged weight
files, a read-only or full disk (the last complete checkpoint kept), a DeepSpeed file that is not an object,
a stray word on the command line, an output path that is a file. In-process where the exception is the
behaviour; real launches where the exit code and the one line are."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dstrain.config import ConfigError, UserError
from tests.faults.conftest import STEPS, Job, distill_args, fault_env
from tests.launch import ROOT, cpu_env, free_port, run_cli


def _one_line_exit_2(proc, expect: str) -> None:
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]
    assert "Traceback" not in err


def _damage(folder: Path) -> Path:
    """Overwrite the start of model.safetensors (its header) with bytes that are not a header."""
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:4096] = b"\x00\xff" * 2044
    f.write_bytes(bytes(data))
    return folder


@pytest.fixture
def damaged_teacher(tmp_path, tiny_teacher_dir) -> Path:
    return _damage(Path(shutil.copytree(tiny_teacher_dir, tmp_path / "damaged")))


def test_damaged_weights_are_a_named_error(tmp_path, damaged_teacher, tiny_shards_dir):
    from dstrain.finetune.run import finetune
    from dstrain.init_student import init_student
    from dstrain.train.commands import distill

    msg = r"cannot load a masked-LM from it \(SafetensorError: .*; the weight file is damaged or incomplete"
    with pytest.raises(UserError, match=rf"--teacher .*damaged: {msg}"):
        distill(teacher=str(damaged_teacher), data=str(tiny_shards_dir), out_dir=str(tmp_path / "run"),
                ds_config="ds_configs/cpu_zero2.json")
    with pytest.raises(UserError, match=rf"--teacher .*damaged: {msg}"):
        init_student(teacher=str(damaged_teacher), out_dir=str(tmp_path / "s"))
    with pytest.raises(UserError, match=r"--model .*damaged: cannot load a model from it \(SafetensorError: .*damaged"):
        finetune(model=str(damaged_teacher), task="shakespeare_genre", out_dir=str(tmp_path / "ft"))
    assert not any((tmp_path / n).exists() for n in ("run", "s", "ft"))


def test_bad_paths_and_ds_configs_are_named_errors(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    from dstrain.finetune.run import finetune
    from dstrain.train.commands import distill

    base = dict(teacher=str(tiny_teacher_dir), data=str(tiny_shards_dir), out_dir=str(tmp_path / "run"))
    ds = tmp_path / "ds.json"
    for text, match in (("[1, 2]", r"holds a JSON list, not an object of DeepSpeed settings"),
                        ('"zero2"', r"holds a JSON str, not an object"),
                        ('{"fp16": true}', r'"fp16" must be an object of settings .*got true'),
                        ('{"zero_optimization": 2}', r'"zero_optimization" must be an object')):
        ds.write_text(text)
        with pytest.raises(ConfigError, match=rf"--ds_config .*ds.json: {match}"):
            distill(**base, ds_config=str(ds))
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    with pytest.raises(UserError, match=r"--out_dir .*results.txt: exists and is a file, not a folder"):
        finetune(model=str(tiny_teacher_dir), task="shakespeare_genre", out_dir=str(a_file))
    with pytest.raises(UserError, match=r"--out_dir .*results.txt: exists and is a file, not a folder"):
        distill(**dict(base, out_dir=str(a_file)), ds_config="ds_configs/cpu_zero2.json")
    assert a_file.read_text() == "not a folder" and not (tmp_path / "run").exists()


@pytest.fixture
def tmpfs(tmp_path):
    """A small real filesystem (tmpfs) mounted for the test: remount it read-only or fill it up."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_command_line_mistakes_and_a_read_only_out_dir_are_one_line(tmp_path, tmpfs, tiny_teacher_dir, tiny_shards_dir):
    (tmpfs / "runs").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    out = tmpfs / "runs" / "r1"
    common = ["--teacher", str(tiny_teacher_dir), "--data", str(tiny_shards_dir), "--ds_config",
              "ds_configs/cpu_zero2.json"]
    _one_line_exit_2(run_cli("distill", *common, "--out_dir", str(out), check=False),
                     f"--out_dir {out}: {tmpfs / 'runs'} is not writable (permission denied or a read-only filesystem)")
    _one_line_exit_2(run_cli("distill", "stray", *common, "--out_dir", str(tmp_path / "r2"), check=False),
                     "`distill`: unexpected argument(s) 'stray': every setting is --name VALUE")
    proc = subprocess.run([sys.executable, "data_prep/build_shards.py", "extra", "--tokenizer", str(tiny_teacher_dir),
                           "--out_dir", str(tmp_path / "s")], capture_output=True, text=True, cwd=ROOT, env=cpu_env())
    _one_line_exit_2(proc, "unexpected argument(s) 'extra'")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "s").exists()


def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_the_relaunch_finishes(tmp_path, tmpfs, tiny_teacher_dir,
                                                                                  tiny_shards_dir):
    """The disk fills up after the step-2 checkpoint (a real filesystem, really full): the next save fails,
    the run exits 2 with one line, step 2 stays the newest complete checkpoint; after space is freed the same
    command resumes from it and finishes."""
    from dstrain.checkpoint import verify

    out = tmpfs / "run"
    args = distill_args(tiny_teacher_dir, tiny_shards_dir, out)
    latest = out / "checkpoints" / "latest"
    filler = tmpfs / "filler"
    # one process, started as a launcher would start rank 0 of 1, so that the fault injection acts in it: the disk
    # fills right after the step-2 checkpoint became `latest` (a test polling for it lost the race on a busy machine)
    env = fault_env({"rank": 0, "fill_after_replace": "checkpoints/latest", "fill_file": str(filler)},
                    RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    job = Job(args, tmp_path / "a.log", ranks=1, env=env)
    assert job.wait(timeout=600) == 2, job.tail()
    log = job.output()
    errors = [line for line in log.splitlines() if "dstrain: error:" in line]
    assert len(errors) == 1 and "o space left on device" in errors[0], log[-3000:]
    assert "Traceback" not in log
    assert latest.read_text() == "step-00000002" and verify(out / "checkpoints" / "step-00000002") is None
    assert not (out / "metrics.json").exists()

    filler.unlink()
    job2 = Job(args, tmp_path / "b.log", ranks=1)
    assert job2.wait(timeout=600) == 0, job2.tail()
    assert "resumed from" in job2.output() and "step-00000002" in job2.output()
    assert json.loads((out / "metrics.json").read_text())["step"] == STEPS
