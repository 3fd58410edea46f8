"""Real runs through the `deepspeed` launcher with 2 CPU ranks (gloo), ZeRO-2 and ZeRO-3, plus single-process
runs of the shipped GPU configs (on CPU they run as bf16): outputs, TensorBoard, checkpoints, preemption,
exact resume, export. Divergence (NaN steps skipped, then a stop) with ds_configs/zero3_bf16.json on 2 ranks:
tests/faults/test_divergence.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dstrain.checkpoint import verify
from tests.launch import run_cli

TRAIN_SCALARS = {"train/loss_total", "train/loss_ce", "train/loss_mlm", "train/loss_cos", "train/lr",
                 "train/skipped_steps", "train/grad_norm", "perf/tokens_per_s", "perf/samples_per_s",
                 "eval/student_mlm_loss", "eval/student_mlm_acc", "eval/teacher_mlm_loss", "eval/teacher_mlm_acc",
                 "data/bad_shards"}


def scalars(run: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: {e.step: e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"]}


def distill_args(teacher, shards, out, ds_config="ds_configs/cpu_zero3.json", steps=8, **extra):
    flags = dict(teacher=teacher, data=shards, out_dir=out, ds_config=ds_config, max_steps=steps,
                 micro_batch_size_per_gpu=4, grad_accum_steps=2, lr=3e-3, warmup_frac=0.25, log_every=1,
                 eval_every=4, eval_batches=2, save_every=4, keep_last=2, seed=7)
    flags.update(extra)
    return ("distill", *[x for k, v in flags.items() for x in (f"--{k}", str(v))])


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, tiny_teacher_dir, tiny_shards_dir) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("zero3") / "run"
    proc = run_cli(*distill_args(tiny_teacher_dir, tiny_shards_dir, out), ranks=2, fresh=True)
    return out, proc.stdout + proc.stderr


def test_zero3_two_ranks_outputs(zero3_run):
    out, log = zero3_run
    assert log.count("exits successfully") == 2  # the launcher saw both ranks finish
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["global_batch_size"] == 16 and cfg["teacher_placement"] == "replicated"
    assert cfg["deepspeed"]["zero_optimization"]["stage"] == 3 and cfg["precision_used"] == "fp32"
    assert cfg["layer_map_used"] == [0, 2]
    m = json.loads((out / "metrics.json").read_text())
    for k in ("student_mlm_loss", "student_mlm_acc", "teacher_mlm_loss", "teacher_mlm_acc"):
        assert isinstance(m[k], float) and math.isfinite(m[k]), (k, m[k])
    assert m["step"] == 8 and m["samples_seen"] == 8 * 16 and m["skipped_steps"] == 0
    sc = scalars(out)
    assert TRAIN_SCALARS <= set(sc), TRAIN_SCALARS - set(sc)
    assert sorted(sc["train/loss_total"]) == list(range(1, 9))
    loss = sc["train/loss_total"]
    assert (loss[7] + loss[8]) / 2 < (loss[1] + loss[2]) / 2  # the loss falls
    lr = sc["train/lr"]
    assert lr[1] == pytest.approx(3e-3) and lr[8] < lr[4]  # warmup over 2 steps, then linear decay
    # keep_last 2 (rotation: tests/faults/test_trust.py): both checkpoints complete, the final one named by latest
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.glob("step-*")) == ["step-00000004", "step-00000008"]
    assert verify(ck / "step-00000004") is None
    assert (ck / "latest").read_text() == "step-00000008" and verify(ck / "step-00000008") is None
    assert {p.name for p in (ck / "step-00000008").glob("dstrain_rank*.pt")} == {"dstrain_rank000.pt", "dstrain_rank001.pt"}


def test_export_loads_in_transformers(zero3_run, tiny_teacher_dir):
    import torch
    from transformers import AutoModelForMaskedLM, pipeline

    out, _ = zero3_run
    model = AutoModelForMaskedLM.from_pretrained(out / "student")
    assert type(model).__name__ == "DistilBertForMaskedLM" and model.config.n_layers == 2
    assert (out / "student" / "model.safetensors").is_file()
    fill = pipeline("fill-mask", model=str(out / "student"))
    preds = fill("the king is [MASK] .")
    assert len(preds) == 5 and all(0.0 <= p["score"] <= 1.0 for p in preds)
    # the export holds the trained fp32 weights, not the student's initial (teacher-copied) ones
    from dstrain.models import build_student, load_teacher

    teacher = load_teacher(str(tiny_teacher_dir))
    init, _ = build_student(teacher, teacher.config, None, "even", "teacher", 7)
    trained = dict(model.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trained.values())
    assert any(not torch.equal(p, trained[n]) for n, p in init.named_parameters())


def test_resume_from_a_mid_run_checkpoint_matches_uninterrupted(zero3_run, tmp_path, tiny_teacher_dir,
                                                                tiny_shards_dir):
    """ZeRO-3 resume is exact: the run folder as a crash after step 7 leaves it (checkpoint 4 the newest, no
    student/ nor metrics.json, TensorBoard events up to step 8), relaunched with the same command, gives the
    uninterrupted run's losses and learning rates (fp32, same seed) step for step. (Preemption's save and
    exit, then the resume, with ZeRO-2: tests/faults/test_preemption.py.)"""
    import shutil

    from tests.faults.conftest import copy_run, unfinish

    ref, _ = zero3_run
    out = unfinish(copy_run(ref, tmp_path / "run"))
    shutil.rmtree(out / "checkpoints" / "step-00000008")
    (out / "checkpoints" / "latest").write_text("step-00000004")
    proc = run_cli(*distill_args(tiny_teacher_dir, tiny_shards_dir, out), "--resume", "true", ranks=2)
    assert "at step 4" in proc.stdout + proc.stderr
    a, b = scalars(ref), scalars(out)
    for tag in ("train/loss_total", "train/loss_ce", "train/loss_mlm", "train/loss_cos", "train/lr"):
        assert sorted(b[tag]) == list(range(1, 9)), tag
        for s in range(1, 9):
            assert b[tag][s] == pytest.approx(a[tag][s], rel=1e-6, abs=1e-7), (tag, s)
    ma, mb = json.loads((ref / "metrics.json").read_text()), json.loads((out / "metrics.json").read_text())
    assert mb["student_mlm_loss"] == pytest.approx(ma["student_mlm_loss"], rel=1e-6)
    assert mb["samples_seen"] == ma["samples_seen"] and mb["tokens_seen"] == ma["tokens_seen"]


def test_zero2_two_ranks_masked_only_kl(tmp_path, tiny_teacher_dir, tiny_shards_dir):
    out = tmp_path / "run"
    run_cli(*distill_args(tiny_teacher_dir, tiny_shards_dir, out, "ds_configs/cpu_zero2.json", 6,
                          restrict_ce_to_mask="true", layer_map="reference", student_init="teacher"), ranks=2)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["deepspeed"]["zero_optimization"]["stage"] == 2 and cfg["layer_map_used"] == [0, 3]
    loss = scalars(out)["train/loss_total"]
    assert (loss[5] + loss[6]) / 2 < (loss[1] + loss[2]) / 2
    assert verify(out / "checkpoints" / "step-00000006") is None and (out / "student" / "config.json").is_file()


def test_pretrain_zero2_fp16_config_single_process(tmp_path, tiny_shards_dir):
    """`pretrain` (MLM only, BERT from the shards' tokenizer) with ds_configs/zero2_fp16.json: on CPU it runs
    as bf16; the export is a BertForMaskedLM that fill-mask loads."""
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "teacher"
    run_cli("pretrain", "--data", str(tiny_shards_dir), "--out_dir", str(out), "--ds_config", "ds_configs/zero2_fp16.json",
            "--max_steps", "4", "--num_layers", "2", "--hidden_size", "32", "--num_heads", "2", "--intermediate_size", "64",
            "--max_position_embeddings", "64", "--micro_batch_size_per_gpu", "8", "--eval_batches", "2", "--lr", "1e-3")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["precision_used"] == "bf16" and cfg["command"] == "pretrain"
    m = AutoModelForMaskedLM.from_pretrained(out / "student")
    assert type(m).__name__ == "BertForMaskedLM" and m.config.num_hidden_layers == 2
    sc = scalars(out)
    assert {"train/loss_total", "train/loss_mlm", "eval/student_mlm_loss"} <= set(sc) and "eval/teacher_mlm_loss" not in sc
