"""The templates in slurm/, submitted with the real `sbatch` to a real local multi-node Slurm cluster.

    .venv/bin/pytest tests/slurm -ra        # as root (installs Slurm with scripts/install_slurm.sh if missing)

Scaled to CPU by environment only (the templates themselves are unchanged): 2 nodes x 2 ranks, gloo,
a 4-layer 32-wide teacher, the tiny shards, `--gpus-per-node=2` against the cluster's fake GPUs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm.conftest import SLURM_SKIP

if SLURM_SKIP:
    pytest.skip(SLURM_SKIP, allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ["slurm/distill_8node.sh", "slurm/distill_1node.sh", "slurm/finetune_glue.sh"]
# Fast, tiny distillation; lr high enough that the loss visibly falls within 40 steps.
TINY_ARGS = ["--micro_batch_size_per_gpu", "4", "--progress", "false", "--eval_every", "0", "--eval_batches", "2",
             "--lr", "0.01", "--warmup_frac", "0.0", "--log_every", "2", "--save_every", "10"]


def job_env(cluster, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = cluster.env(
        DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
        PYTHON=sys.executable, DS_CONFIG="ds_configs/cpu_zero2.json", RUNS_DIR=str(tmp_path / "runs"),
        RESIGNAL_SECS="20")
    for k in ("NODES", "GPUS_PER_NODE", "RUN_DIR", "RESUME", "MASTER_PORT", "OMP_NUM_THREADS"):
        env.pop(k, None)  # the caller's shell must not leak settings into the job
    env.update(extra)
    return env


def submit(cluster, tmp_path: Path, template: str, *args: str, sbatch: tuple[str, ...] = (), **env: str):
    """sbatch TEMPLATE ARGS from the checkout; returns (job id, log path)."""
    (tmp_path / "runs").mkdir(exist_ok=True)
    out = tmp_path / "logs"
    out.mkdir(exist_ok=True)
    job = cluster.sbatch(*sbatch, f"--output={out}/%x-%j.out", template, *args,
                         env=job_env(cluster, tmp_path, **env), cwd=ROOT)
    return job, out


NOISE = ("Loading weights", "Loading checkpoint shards", "Writing model shards", "FutureWarning", "return func(",
         "shm_comm_op built")


def log_of(out: Path, job: int) -> str:
    """The job's log (all array elements), without progress bars and warnings, for asserts and failures."""
    text = "".join(f.read_text(errors="replace") for f in sorted(out.glob(f"*-{job}*.out")))
    return "\n".join(line for line in text.splitlines() if line.strip() and not any(n in line for n in NOISE))


def tb_scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return [(e.step, e.value) for e in ea.Scalars(tag)]


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("template", TEMPLATES)
def test_template_outside_slurm_says_to_use_sbatch(template):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    proc = subprocess.run(["bash", template], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "is a Slurm batch script" in proc.stderr and "sbatch" in proc.stderr


def test_templates_have_strict_mode_and_no_cluster_specifics():
    for t in TEMPLATES:
        text = (ROOT / t).read_text()
        assert "set -euo pipefail" in text, t
        assert '"$@"' in text, f"{t} must pass extra arguments through"
        sb = [line for line in text.splitlines() if line.startswith("#SBATCH")]
        assert sb, t
        for line in sb:  # partitions, accounts, e-mail and paths are the user's, not the template's
            assert not re.search(r"--(partition|account|mail-user|qos|reservation|chdir)\b|-p |-A ", line), line


def test_bad_input_fails_fast_with_a_message(slurm_cluster, tmp_path, tiny_teacher, tiny_shards_dir):
    """Node count not matching the allocation, a missing DS config / runs folder / shards / model, RESUME=true on
    a missing run folder, GPUS_PER_NODE above the allocation, an array index beyond TASKS: each job fails in
    seconds (exit 2) naming the input, and nothing is launched or written. Covers all three templates."""
    d8, d1, ft = "slurm/distill_8node.sh", "slurm/distill_1node.sh", "slurm/finetune_glue.sh"
    one = ("--nodes=1", "--gpus-per-node=2")
    ft_sb = ("--array=0-0", "--cpus-per-task=1")
    cases = {  # name: (template, env, sbatch args, expected message)
        "nodes": (d8, {"NODES": "2"}, one, "NODES=2 but this job was allocated 1 node"),
        "ds_config": (d8, {"DS_CONFIG": "ds_configs/nope.json"}, one, "DS_CONFIG=ds_configs/nope.json: no such file"),
        "runs_dir": (d8, {"RUNS_DIR": str(tmp_path / "missing")}, one, f"{tmp_path / 'missing'}: no such folder"),
        "resume": (d8, {"RESUME": "true", "RUN_DIR": str(tmp_path / "runs" / "gone")}, one,
                   "RESUME=true but the run folder"),
        "gpus": (d8, {"GPUS_PER_NODE": "4"}, one, "GPUS_PER_NODE=4 ranks per node but Slurm gave this job 2 GPU"),
        "data": (d8, {"DATA": str(tmp_path / "noshards")}, one, "noshards: no such folder (shards)"),
        "1node": (d1, {"NODES": "3"}, ("--gpus-per-node=2",), "NODES=3 but this job was allocated 1 node"),
        "ft_model": (ft, {}, ft_sb, "MODEL is not set"),
        "ft_array": (ft, {"MODEL": str(tiny_teacher), "TASKS": "rte"}, ("--array=1-1", "--cpus-per-task=1"),
                     "array index 1 but TASKS has 1 task(s)"),
    }
    jobs = {}
    for name, (template, env, sb, _) in cases.items():
        env = {"TEACHER": str(tiny_teacher), "DATA": str(tiny_shards_dir), **env}
        jobs[name] = submit(slurm_cluster, tmp_path, template, "--max_steps", "2",
                            sbatch=(*sb, f"--job-name=bad-{name}"), **env)
    for name, (job, out) in jobs.items():
        info = slurm_cluster.wait(job, timeout=90)
        log = log_of(out, job)
        assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (name, info["JobState"], log)
        assert cases[name][3] in log, (name, log)
        assert "starts its ranks" not in log and "finetune " not in log, f"{name}: launched despite bad input"
        assert int(info["Restarts"]) == 0
    assert not any((tmp_path / "runs").iterdir()), "a failed check must not leave a run folder behind"


# ---------------------------------------------------------------------------------------------- real runs
def test_preempt_checkpoint_requeue_resume(slurm_cluster, tmp_path, tiny_teacher, tiny_shards_dir):
    """2 nodes x 2 ranks in one job; USR1 to the batch shell (what --signal=B:USR1@SECS delivers before the time
    limit): every rank stops at a step boundary with a checkpoint, the job requeues itself and the requeued job
    finishes from it: every rank saves its ZeRO partition, the loss falls, the student is exported.

    The signal is sent while the ranks are still starting up (before the trainer has a handler), the hard
    case: the template repeats it every RESIGNAL_SECS until the ranks act on it. DataLoader workers
    (--num_workers 1) get the signal too and must not take their rank down."""
    max_steps = 60
    job, out = submit(slurm_cluster, tmp_path, "slurm/distill_8node.sh", "--max_steps", str(max_steps),
                      "--num_workers", "1", *TINY_ARGS,
                      sbatch=("--nodes=2", "--gpus-per-node=2", "--time=30", "--job-name=pre"),
                      TEACHER=str(tiny_teacher), DATA=str(tiny_shards_dir), RESIGNAL_SECS="5")
    run = tmp_path / "runs" / f"pre-{job}"
    deadline = time.time() + 240
    while log_of(out, job).count("starts its ranks") < 2:  # both launchers are up, ranks are importing
        assert time.time() < deadline, log_of(out, job)[-8000:]
        assert slurm_cluster.job(job)["JobState"] in ("PENDING", "RUNNING"), log_of(out, job)[-8000:]
        time.sleep(0.5)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", str(job))

    # the job goes back to the queue by itself (Restarts=1) and starts again once Slurm lets it (the
    # test cluster sets AuthInfo=cred_expire=10; Slurm's default holds a requeued job for 120 s)
    requeued = slurm_cluster.wait(job, timeout=300, until=lambda j: int(j["Restarts"]) >= 1
                                  or j["JobState"] in ("COMPLETED", "FAILED", "CANCELLED"))
    assert requeued["Restarts"] == "1", (requeued, log_of(out, job)[-4000:])
    info = slurm_cluster.wait(job, timeout=480)
    log = log_of(out, job)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", log[-8000:]
    assert info["Restarts"] == "1"

    m = re.search(r'preempted: \{"step": (\d+), "checkpoint": "(step-\d+)", "signal": 10\}', log)
    assert m, log[-8000:]
    stopped_at, tag = int(m.group(1)), m.group(2)
    assert 1 <= stopped_at < max_steps and tag == f"step-{stopped_at:08d}"
    assert f"requeueing job {job} (restart 1)" in log
    assert f"job {job} restart 1: distill on 2 node(s) x 2 rank(s)" in log
    # the requeued run resumed from exactly that checkpoint, in the same run folder, and finished
    assert f"resumed from {run}/checkpoints/{tag} at step {stopped_at}" in log, log[-8000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["step"] == max_steps and metrics["samples_seen"] == max_steps * 16
    assert (run / "student" / "config.json").exists()
    steps = [s for s, _ in tb_scalars(run / "tb", "train/loss_total")]
    assert steps == list(range(2, max_steps + 1, 2)), "every logged step once: nothing lost, nothing repeated"
    assert not (run / "PREEMPTED").exists()
    # every node started its ranks, and all 4 ranks met in one job
    assert "node dsn1 (SLURM_NODEID=0) starts its ranks" in log and "node dsn2 (SLURM_NODEID=1) starts its ranks" in log
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 4 and cfg["global_batch_size"] == 16
    final = run / "checkpoints" / f"step-{max_steps:08d}"
    assert (final / "COMPLETE").exists()
    assert sorted(p.name for p in final.glob("zero_pp_rank_*_optim_states.pt")) == [
        f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(4)], "each rank saves its ZeRO partition"
    loss = [v for _, v in tb_scalars(run / "tb", "train/loss_total")]
    assert sum(loss[-3:]) / 3 < sum(loss[:3]) / 3 - 0.05, loss
    from transformers import AutoModelForMaskedLM

    student = AutoModelForMaskedLM.from_pretrained(str(run / "student"))
    assert student.config.num_hidden_layers == 2  # half the 4-layer teacher


def test_finetune_glue_array(slurm_cluster, tmp_path, tiny_teacher):
    """The GLUE sweep template as a 2-element job array: element 0 the offline genre task, element 1 RTE from
    local TSVs laid out as GLUE is distributed (GLUE_DIR/RTE/train.tsv, dev.tsv)."""
    rte = tmp_path / "glue" / "RTE"
    rte.mkdir(parents=True)
    rows = [("the king is dead", "the king lives", "not_entailment"), ("a storm at sea", "there is a storm", "entailment")]
    for split, n in (("train", 24), ("dev", 8)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        lines += [f"{i}\t{rows[i % 2][0]}\t{rows[i % 2][1]}\t{rows[i % 2][2]}" for i in range(n)]
        (rte / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    job, out = submit(slurm_cluster, tmp_path, "slurm/finetune_glue.sh", "--max_steps", "3", "--global_batch_size", "8",
                      "--max_train_examples", "32", "--max_eval_examples", "16", "--eval_batch_size_per_gpu", "16",
                      sbatch=("--array=0-1", "--cpus-per-task=1", "--time=20", "--job-name=ft"),
                      MODEL=str(tiny_teacher), TASKS="shakespeare_genre,rte", GLUE_DIR=str(tmp_path / "glue"))
    records = slurm_cluster.wait(job, timeout=480)
    logs = log_of(out, job)
    assert [r["JobState"] for r in records] == ["COMPLETED", "COMPLETED"], logs[-6000:]
    sweep = tmp_path / "runs" / f"ft-{job}"
    for task in ("shakespeare_genre", "rte"):
        metrics = json.loads((sweep / task / "metrics.json").read_text())
        assert metrics, task
    assert "accuracy" in json.dumps(json.loads((sweep / "rte" / "metrics.json").read_text()))
