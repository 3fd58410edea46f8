"""`study --quick` end to end as a user runs it: real subprocesses of every public command, real shards,
real DeepSpeed runs, real TensorBoard files, then REPORT.md and the figures; rerun caching; determinism.

The quick study runs once per module (about 2 minutes on 2 idle cores); the other tests reuse its folder. It runs
two of the five ablations: `no_kl` (a distillation with other loss weights) and `mlm_only` (a `pretrain` step);
the other three are the same `distill` step with other flags (`--alpha_cos 0`, `--alpha_mlm 0`, `--student_init
random`, tested in tests/train); test_plan_distils_each_configuration_with_every_seed checks that the default plan
runs all five with their flags.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.launch import run_cli

QUICK = ("--quick", "--ablations", "no_kl,mlm_only")
STEPS = ["tokenizer", "shards", "teacher", "student", "ablation_no_kl", "ablation_mlm_only", "finetune_teacher",
         "finetune_student", "finetune_ablation_no_kl", "finetune_ablation_mlm_only", "benchmark"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, float, str]:
    run = tmp_path_factory.mktemp("study") / "quick"
    t0 = time.time()
    proc = run_cli("study", "--out_dir", str(run), *QUICK, timeout=900, fresh=True)  # not niced: see tests/zygote.py
    return run, time.time() - t0, proc.stdout


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_quick_study_writes_a_full_report(quick_run):
    run, wall, out = quick_run
    report = (run / "REPORT.md").read_text()
    # every step ran and left its record with the exact command line
    for name in STEPS:
        rec = json.loads((run / "steps" / f"{name}.json").read_text())
        assert rec["returncode"] == 0, name
        assert rec["command"] in report, f"command of {name} missing from the report"
    # Table 1: numbers read from the runs' own files
    t = json.loads((run / "teacher" / "metrics.json").read_text())
    s = json.loads((run / "student" / "metrics.json").read_text())
    ft_t = json.loads((run / "finetune" / "teacher" / "metrics.json").read_text())
    ft_s = json.loads((run / "finetune" / "student" / "metrics.json").read_text())
    assert f"{t['student_mlm_loss']:.3f}" in report and _pct(t["student_mlm_acc"]) in report
    assert f"{s['student_mlm_loss']:.3f}" in report
    assert _pct(ft_t["accuracy"]) in report and _pct(ft_s["accuracy"]) in report
    keep = ft_s["accuracy"] / ft_t["accuracy"]
    assert f"student keeps {100 * keep:.1f}% of the teacher" in report
    assert len(ft_t["per_seed"]) == 2  # quick: 2 seeds, median reported
    # the ablation table has a filled row per ablation run, with the paper's number beside it, and no other row
    rows = [line for line in report.splitlines() if line.startswith("| ")]
    for label, paper in (("without L_ce", "-2.96"), ("MLM alone", "not in the paper")):
        row = next(line for line in rows if label in line.split("|")[1])
        assert paper in row and "n/a" not in row, row
    for label in ("without L_cos", "without L_mlm", "random initialisation"):
        assert not any(label in line.split("|")[1] for line in rows), label
    # size and speed come from benchmark.json
    b = json.loads((run / "benchmark" / "benchmark.json").read_text())
    assert f"{b['models'][0]['params_total']:,}" in report and f"{b['models'][1]['params_total']:,}" in report
    assert re.search(r"\| 64 \| 1 \| fp32 \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \| [0-9.]+x \|", report)
    # figures: real PNGs, linked from the report
    for fig in ("loss_terms.png", "heldout_mlm.png", "genre.png"):
        data = (run / "figures" / fig).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, fig
        assert f"(figures/{fig})" in report
    assert "tensorboard --logdir" in report and "QUICK" in report
    assert "study: wrote" in out
    # the recipe reaches the commands: BERT-style teacher pretraining (no dropout, uniform 40% masking),
    # KL on masked positions, the three-genre task; and the report says how big the seed noise is
    teacher_cmd = json.loads((run / "steps" / "teacher.json").read_text())["argv"]
    for flag, value in (("--dropout", "0.0"), ("--mlm_smoothing", "0.0"), ("--mlm_probability", "0.4")):
        assert teacher_cmd[teacher_cmd.index(flag) + 1] == value, flag
    student_cmd = json.loads((run / "steps" / "student.json").read_text())["argv"]
    assert student_cmd[student_cmd.index("--restrict_ce_to_mask") + 1] == "true"
    assert "--task shakespeare_genre3" in report and "3 genres: comedies, histories, tragedies" in report
    assert re.search(r"Quality bar .*: \*\*(met|NOT met|met on the medians, but .* within noise)\*\*", report)
    # every difference has an interval, from the runs' own predictions (2 fine-tuning seeds x 192 passages)
    assert re.search(r"mean difference [+-][0-9.]+ points, 95% interval \[[+-][0-9.]+, [+-][0-9.]+\]", report)


def test_curves_come_from_tensorboard_files(quick_run):
    from dstrain.study.report import read_scalars

    run = quick_run[0]
    curves = read_scalars(run / "student")
    for tag in ("train/loss_total", "train/loss_ce", "train/loss_mlm", "train/loss_cos", "eval/student_mlm_loss"):
        assert curves.get(tag), tag
    # the no-KL ablation logs its KL term as zero weight: the total differs from the full run's
    no_kl = read_scalars(run / "ablation_no_kl")
    assert no_kl["train/loss_total"] != curves["train/loss_total"]
    steps = [s for s, _ in curves["train/loss_total"]]
    assert steps == sorted(steps) and steps[-1] == 20  # quick: 20 student steps


def test_rerun_skips_finished_steps(quick_run):
    run = quick_run[0]
    before = {n: (run / n / "metrics.json").stat().st_mtime_ns for n in ("teacher", "student")}
    proc = run_cli("study", "--out_dir", str(run), *QUICK, timeout=300)
    for name in STEPS:
        assert f"[study] {name}: finished earlier, skipped" in proc.stdout, name
    assert "FAILED" not in proc.stdout and ": python " not in proc.stdout  # nothing was started
    assert {n: (run / n / "metrics.json").stat().st_mtime_ns for n in before} == before
    assert "finished earlier" not in (run / "REPORT.md").read_text() and "cached" in (run / "REPORT.md").read_text()


def test_changed_settings_are_refused_before_anything_runs(quick_run):
    run = quick_run[0]
    before = sorted(p.name for p in run.iterdir())
    proc = run_cli("study", "--out_dir", str(run), *QUICK, "--teacher_steps", "31", check=False, timeout=120)
    assert proc.returncode == 2
    assert "teacher" in proc.stderr and "other settings" in proc.stderr and "new --out_dir" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == before


def test_same_seed_gives_the_same_teacher(quick_run, tmp_path):
    """Determinism: a second study folder with the same seed (reusing the cached tokenizer and shards)
    trains a teacher with bit-identical weights and the same held-out metrics."""
    run = quick_run[0]
    other = tmp_path / "again"
    other.mkdir()
    for d in ("tokenizer", "shards"):
        shutil.copytree(run / d, other / d)
    (other / "steps").mkdir()
    for d in ("tokenizer", "shards"):
        rec = json.loads((run / "steps" / f"{d}.json").read_text())
        rec["argv"] = [a.replace(str(run), str(other)) for a in rec["argv"]]
        (other / "steps" / f"{d}.json").write_text(json.dumps(rec))
    (other / "study.json").write_text("{}")
    proc = run_cli("study", "--out_dir", str(other), *QUICK, "--until", "teacher", timeout=300, fresh=True)
    assert "[study] shards: finished earlier, skipped" in proc.stdout
    assert "stopped after step `teacher`" in proc.stdout
    a = json.loads((run / "teacher" / "metrics.json").read_text())
    b = json.loads((other / "teacher" / "metrics.json").read_text())
    assert a["student_mlm_loss"] == b["student_mlm_loss"] and a["student_mlm_acc"] == b["student_mlm_acc"]
    wa = (run / "teacher" / "student" / "model.safetensors").read_bytes()
    wb = (other / "teacher" / "student" / "model.safetensors").read_bytes()
    assert wa == wb
    assert not (other / "REPORT.md").exists()


@pytest.mark.parametrize("args, needle", [
    (["--ablations", "no_kl,bogus"], "--ablations: unknown ['bogus']"),
    (["--teacher_layers", "3"], "--teacher_layers: must be an even number"),
    (["--finetune_max_seq_length", "128"], "--finetune_max_seq_length: 128 is longer than"),
    (["--until", "nothing"], "--until nothing: no such step"),
    (["--teacher_step", "5"], "did you mean --teacher_steps"),
    (["--finetune_task", "sst2"], "--finetune_task: 'sst2': the study runs offline"),
    (["--pretrain_mlm_probability", "1.5"], "--pretrain_mlm_probability: must be in (0, 1)"),
])
def test_bad_settings_are_clear_errors(tmp_path, args, needle):
    """In-process through `study()` itself, with the values parsed as Fire parses them from the command line
    (the CLI's exit code 2 and one-line message: test_refuses_a_folder_that_is_not_a_study, below)."""
    from fire.parser import DefaultParseValue

    from dstrain.config import UserError
    from dstrain.study.run import study

    kwargs = {args[0].lstrip("-"): DefaultParseValue(args[1])}
    with pytest.raises(UserError) as e:
        study(out_dir=str(tmp_path / "r"), quick=True, **kwargs)
    assert needle in f"dstrain: error: {e.value}", str(e.value)
    assert not (tmp_path / "r").exists()


def test_refuses_a_folder_that_is_not_a_study(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    proc = run_cli("study", "--out_dir", str(tmp_path), "--quick", check=False, timeout=120)
    assert proc.returncode == 2 and "not a study folder" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_paired_bootstrap_interval():
    """The interval covers the true difference, shrinks with more passages and seeds, and excludes 0 only
    when the difference is real; pairing removes what two configurations share."""
    import numpy as np

    from dstrain.study.report import paired_bootstrap

    rng = np.random.default_rng(0)
    hard = rng.random(1500) < 0.5  # passages both configurations get wrong: shared, cancels in pairs
    a = (~hard & (rng.random((2, 3, 1500)) < 0.9)).astype(float)
    b = (~hard & (rng.random((2, 3, 1500)) < 0.8)).astype(float)  # a is better by 5 points on average
    d, lo, hi = paired_bootstrap(a, b)
    assert 0 < lo < d < hi and lo < 5 < hi
    same = paired_bootstrap(a, a.copy())
    assert same == (0.0, 0.0, 0.0)
    noise = paired_bootstrap(a[:, :, :100], np.roll(a, 1, axis=2)[:, :, :100])
    assert noise[1] < 0 < noise[2]  # no real difference: the interval includes 0
    _, lo_small, hi_small = paired_bootstrap(a[:1, :1, :300], b[:1, :1, :300])
    assert hi_small - lo_small > hi - lo
    with pytest.raises(ValueError, match="same shape|one shape"):
        paired_bootstrap(a[0], b[0])


def test_plan_distils_each_configuration_with_every_seed():
    from dstrain.config import build_config
    from dstrain.study.report import config_name
    from dstrain.study.run import StudyConfig, plan

    cfg = build_config(StudyConfig, {"out_dir": "/tmp/x", "distill_seeds": 3, "ablations": "no_kl,mlm_only"})
    steps = {s.name: s for s in plan(cfg, Path("/tmp/x"))}
    for name in ("student", "ablation_no_kl", "ablation_mlm_only"):
        seeds = []
        for d, sfx in enumerate(("", "_s1", "_s2")):
            s = steps[name + sfx]
            seeds.append(s.argv[s.argv.index("--seed") + 1])
            assert config_name(name + sfx) == name
            ft = steps[f"finetune_{name}{sfx}"].argv  # every model is fine-tuned with the same seeds
            assert ft[ft.index("--seed") + 1] == "0" and ft[ft.index("--num_seeds") + 1] == str(cfg.finetune_seeds)
        assert seeds == ["0", "1", "2"]
    assert "teacher_s1" not in steps and config_name("teacher") == "teacher"
    # the full study scores every validation passage of the three-genre task and distils with 2 seeds
    full = build_config(StudyConfig, {"out_dir": "/tmp/x"})
    assert full.finetune_eval_examples == 1570 and full.distill_seeds == 2 and full.finetune_seeds == 2
    # by default every ablation is distilled (and fine-tuned) with its own flags; MLM-only is a `pretrain`
    steps = {s.name: s.argv for s in plan(full, Path("/tmp/x"))}
    for name, (flag, value) in {"no_kl": ("--alpha_ce", "0"), "no_cos": ("--alpha_cos", "0"),
                                "no_mlm": ("--alpha_mlm", "0"), "random_init": ("--student_init", "random")}.items():
        argv = steps[f"ablation_{name}"]
        assert "distill" in argv and argv[argv.index(flag) + 1] == value, name
        assert f"finetune_ablation_{name}" in steps
    assert "pretrain" in steps["ablation_mlm_only"] and "finetune_ablation_mlm_only" in steps


def test_report_pools_distillation_seeds(quick_run, tmp_path):
    """write_report on the quick run's files plus a copy standing in for a second distillation seed: the
    configurations are pooled (4 runs each) and every ablation row gets an interval."""
    from dstrain.config import build_config
    from dstrain.study.report import write_report
    from dstrain.study.run import StudyConfig, plan

    run = tmp_path / "two_seeds"
    shutil.copytree(quick_run[0], run, ignore=shutil.ignore_patterns("checkpoints", "model"))
    cfg = build_config(StudyConfig, {"out_dir": str(run), "quick": True, "distill_seeds": 2, "ablations": QUICK[2]})
    steps = plan(cfg, run)
    for s in steps:
        if s.name.endswith("_s1"):
            src = s.name.replace("_s1", "")
            shutil.copytree(run / src, run / s.name) if not s.name.startswith("finetune_") else \
                shutil.copytree(run / "finetune" / src.replace("finetune_", ""), run / "finetune" / s.name[9:])
    write_report(run, cfg, steps, {})
    report = (run / "REPORT.md").read_text()
    ft = json.loads((run / "finetune" / "student" / "metrics.json").read_text())
    seeds = [v["accuracy"] for v in ft["per_seed"].values()]
    row = next(line for line in report.splitlines() if line.startswith("| distilled student"))
    assert row.count("%, ") == 3  # 2 distillation seeds x 2 fine-tuning seeds
    assert all(_pct(x) in row for x in seeds)
    for line in [x for x in report.splitlines() if x.startswith("| without L_")]:
        assert re.search(r"\| \[[+-][0-9.]+, [+-][0-9.]+\] \|", line), line


def test_a_forked_cpu_step_runs_its_script_as_a_new_interpreter_would(tmp_path):
    """CPU steps are forks of the study's step server (dstrain/study/steps.py), not new interpreters: the script
    must see what `python SCRIPT ARGS` would give it, and the runner must get its exit code, log and CPU time."""
    import subprocess
    import sys

    from dstrain.study.steps import _ForkedStep, _reap, step_env

    script = tmp_path / "tool" / "show.py"
    script.parent.mkdir()
    script.write_text(
        "import json, os, sys, torch\n"
        "print(json.dumps({'name': __name__, 'argv': sys.argv[1:], 'path0': sys.path[0], 'cwd': os.getcwd(),\n"
        "                  'threads': torch.get_num_threads(), 'env': os.environ.get('DSTRAIN_STEP_TEST')}))\n"
        "print('to stderr', file=sys.stderr)\n"
        "sys.exit(3)\n")
    env = {**step_env(1), "DS_ACCELERATOR": "cpu", "DSTRAIN_STEP_TEST": "seen"}
    fresh = subprocess.run([sys.executable, str(script), "--a", "1"], env=env, cwd=Path(__file__).parents[2],
                           capture_output=True, text=True, timeout=120)
    log = tmp_path / "step.log"
    log.write_text("$ header\n")
    step = _ForkedStep([str(script), "--a", "1"], env, log)
    for _ in range(1200):
        rc, cpu = _reap(step)
        if rc is not None:
            break
        time.sleep(0.1)
    assert rc == fresh.returncode == 3
    assert cpu is not None and cpu > 0
    lines = log.read_text().splitlines()
    assert lines[0] == "$ header" and "to stderr" in lines
    assert json.loads(lines[1]) == json.loads(fresh.stdout.splitlines()[0])
