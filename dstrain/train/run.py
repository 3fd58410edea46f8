"""`distill` and `pretrain`: the DeepSpeed trainer (one code path for CPU/gloo and GPU/NCCL).

    # 8 GPUs, the paper's recipe (global batch 4,000 sequences = 10 x 50 x 8):
    deepspeed dstrain/cli.py distill --teacher bert-base-uncased --data shards/ --out_dir runs/d1 \
        --ds_config ds_configs/zero2_fp16.json --micro_batch_size_per_gpu 10 --grad_accum_steps 50 \
        --max_steps 30000
    # one process, CPU, tiny: python dstrain/cli.py distill --teacher T --data S --out_dir R \
    #     --ds_config ds_configs/cpu_zero2.json --max_steps 20
    # a teacher from scratch (MLM only; also the paper's "no distillation" baseline):
    deepspeed dstrain/cli.py pretrain --data shards/ --out_dir runs/t --num_layers 4 --hidden_size 256 ...

Placement: the student is the only module DeepSpeed sees (ZeRO 2 or 3 shards its optimizer state,
gradients and, at stage 3, weights). The teacher is *replicated*: a plain frozen module on every
rank (eval mode, no grad, fp16/bf16 on GPU, no optimizer state), outside the engine, so ZeRO-3 never
partitions or hooks it (the crash of DeepSpeed#3175). A BERT-base teacher is 220 MB in fp16.

Step: for each of grad_accum_steps micro-batches: teacher forward under no_grad -> student forward ->
triple loss -> engine.backward (DeepSpeed divides by the accumulation steps) -> engine.step (updates
at the boundary; on an fp16 overflow or non-finite gradient it skips the update and does not advance
the LR schedule). Then one all-reduce of the step's metrics together with the preemption flag, so all
ranks agree to stop at the same step boundary.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.distributed import distributed_c10d as c10d
from tqdm import tqdm

# transformers and deepspeed stay inside the functions: `distill --help` loads neither
from dstrain.checkpoint import (Checkpointer, check_resume_compatible, nonfinite_params, on_rank0, rng_state,
                                set_rng_state)
from dstrain.config import UserError, atomic_write_json, atomic_write_text, build_config, config_to_dict, opt, require
from dstrain.data import ShardSet, build_eval_loader, build_loader
from dstrain.data.causal import batch_labeler  # next-token labels on causal-LM block shards, else masking
from dstrain.engine import adamw, engine_ds_config, linear_schedule, log_scalars, tb_writer
from dstrain.families import check_shards_match, family_of  # masked or causal LM by the teacher's family
from dstrain.flops import StepFlops, peak_flops
from dstrain.hf_io import has_tokenizer
from dstrain.losses import IGNORE_INDEX, mlm_accuracy, mlm_ce
from dstrain.models import (StudentForDistill, build_bert, build_student, load_teacher, mlm_forward, save_hf_model,
                            teacher_fingerprint)
from dstrain.outputs import check_out_dir, lock_out_dir
from dstrain.recipe import apply_recipe, parse_dropout
from dstrain.runtime import derive_batch, init_distributed, load_ds_config, resolve_ds_config, setup_logging
from dstrain.runtime import device_type as runtime_device_type
from dstrain.train.step import PRETRAIN_LOSS, LossSettings, compile_encoders, micro_step, resolve_compile

log = logging.getLogger("dstrain")
ROOT = Path(__file__).resolve().parent.parent.parent


# ------------------------------------------------------------------------------------------ config
@dataclasses.dataclass
class TrainConfig:
    """Settings shared by `distill` and `pretrain`."""

    data: str = opt(None, "shards folder written by data_prep/build_shards.py (manifest.json, train-*.tar, tokenizer/)")
    out_dir: str = opt(None, "run folder: config.json, tb/, checkpoints/, student/, metrics.json")
    ds_config: str = opt("ds_configs/zero2_fp16.json", "DeepSpeed JSON (ZeRO stage, precision); batch fields come from the flags below")
    precision: str = opt("config", "config (use the DeepSpeed file), fp16, bf16 or fp32; fp16 becomes bf16 on CPU")
    max_steps: int = opt(1000, "optimizer steps (each = grad_accum_steps micro-batches per rank)")
    seed: int = opt(42, "seed for init, dropout, shuffling and masking")
    micro_batch_size_per_gpu: int | None = opt(None, "sequences per rank per micro-step (derived from the others; 8 if no batch size is given)")
    grad_accum_steps: int | None = opt(None, "micro-steps per optimizer step (derived if omitted)")
    global_batch_size: int | None = opt(None, "sequences per optimizer step = micro x accumulation x world size")
    lr: float = opt(5e-4, "peak learning rate (paper: 5e-4)")
    warmup_frac: float = opt(0.05, "linear warmup over this fraction of max_steps, then linear decay to 0")
    warmup_style: str | None = opt(None, "dstrain: lr (s+1)/W at step s, peak at the last warmup step; reference: "
                                   "transformers' get_linear_schedule_with_warmup as the reference builds it (lr 0 "
                                   "at the first step, W = ceil(frac * (max_steps + 1))). None: the --recipe's (dstrain: dstrain)")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.98, "AdamW beta2 (paper: 0.98)")
    adam_eps: float = opt(1e-6, "AdamW epsilon (paper: 1e-6)")
    weight_decay: float = opt(0.0, "AdamW weight decay (paper: 0); never applied to biases and LayerNorm")
    grad_clip: float = opt(5.0, "clip the global gradient norm to this (paper: 5.0); 0 = off")
    mlm_probability: float = opt(0.15, "fraction of real tokens selected for the MLM loss")
    mlm_smoothing: float = opt(0.7, "mask rare tokens more: weight = count^-smoothing (paper 0.7; 0 = uniform)")
    mask_count: str | None = opt(None, "tokens masked per batch: nonspecial = round(p x non-special tokens); reference "
                                 "= ceil(p x all non-pad tokens, [CLS]/[SEP] included). None: the --recipe's (dstrain: nonspecial)")
    num_workers: int = opt(-1, "DataLoader worker processes per rank; -1 = auto: 2 on CUDA (masking and collate off the "
                                "training thread), 0 on CPU (the cores are busy training)")
    compile: str = opt("auto", "torch.compile the teacher's and the student's encoders: auto (on with CUDA and ZeRO "
                               "stage < 3, off on CPU), true or false")
    strict_data: bool = opt(True, "stop on a bad shard (true) or skip and count it (false)")
    log_every: int = opt(10, "TensorBoard scalars every N steps")
    eval_every: int = opt(500, "held-out MLM loss/accuracy of the student every N steps (0 = only at the end)")
    eval_batches: int = opt(50, "micro-batches per rank in each held-out evaluation")
    save_every: int = opt(1000, "checkpoint every N steps (and always at the end); 0 = only at the end")
    keep_last: int = opt(3, "complete checkpoints to keep (older ones are deleted)")
    resume: str = opt("auto", "auto: continue from the newest complete checkpoint if any; true: must; false: never")
    max_bad_steps: int = opt(20, "stop after this many consecutive steps with a non-finite loss or a skip at the minimum fp16 loss scale")
    progress: bool = opt(True, "tqdm progress bar on rank 0")
    dist_timeout_minutes: float = opt(30.0, "a collective that waits longer than this (a dead or stuck rank) fails the run")
    continue_finished: bool = opt(False, "train a finished run further to a larger --max_steps (replaces its student/ and metrics.json)")

    def validate(self) -> None:
        apply_recipe(self, getattr(self, "recipe", "dstrain"))  # fills the recipe settings not given
        # Fire passes a bare `--resume` as True, which arrives here as "True"
        self.resume = str(self.resume).lower()
        require(self.mask_count in ("nonspecial", "reference"), "mask_count", "must be nonspecial or reference")
        require(self.warmup_style in ("dstrain", "reference"), "warmup_style", "must be dstrain or reference")
        require(bool(self.data), "data", "is required: a shards folder from data_prep/build_shards.py")
        require(bool(self.out_dir), "out_dir", "is required: the run folder")
        require(self.max_steps >= 1, "max_steps", "must be >= 1")
        require(self.lr > 0, "lr", "must be > 0")
        require(0.0 <= self.warmup_frac < 1.0, "warmup_frac", "must be in [0, 1)")
        require(0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0, "adam_beta1", "betas must be in [0, 1)")
        require(self.adam_eps > 0, "adam_eps", "must be > 0")
        require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 = no clipping)")
        require(0.0 < self.mlm_probability <= 1.0, "mlm_probability", "must be in (0, 1]")
        require(self.mlm_smoothing >= 0, "mlm_smoothing", "must be >= 0")
        require(self.num_workers >= -1, "num_workers", "must be >= 0, or -1 (auto)")
        require(self.compile in ("auto", "true", "false"), "compile", "must be auto, true or false")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.eval_every >= 0 and self.eval_batches >= 1, "eval_every", "eval_every >= 0 and eval_batches >= 1")
        require(self.save_every >= 0, "save_every", "must be >= 0")
        require(self.keep_last >= 1, "keep_last", "must be >= 1 (the newest checkpoint is always kept)")
        require(self.resume in ("auto", "true", "false"), "resume", "must be auto, true or false")
        require(self.max_bad_steps >= 1, "max_bad_steps", "must be >= 1")
        require(self.dist_timeout_minutes > 0, "dist_timeout_minutes", "must be > 0")
        require(self.precision in ("config", "fp16", "bf16", "fp32"), "precision", "must be config, fp16, bf16 or fp32")


@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """`distill`: a student from --teacher trained with the triple loss."""

    teacher: str = opt(None, "teacher masked-LM: save_pretrained folder or cached HF name (a family of docs/FAMILIES.md)")
    recipe: str = opt("dstrain", "defaults of mask_count, copy_vocab_transform, student_dropout, warmup_style and "
                      "layer_map: dstrain, or reference (the reference code's choices); explicit flags win")
    student_layers: int = opt(0, "student depth; 0 = half the teacher's layers")
    layer_map: str | None = opt(None, "teacher layers copied into the student: even, reference ([0,2,4,7,9,11] for "
                                "12->6) or a list. None: the --recipe's (dstrain: even)")
    student_init: str = opt("teacher", "teacher (copy embeddings, MLM head, mapped layers) or random (ablation)")
    copy_vocab_transform: bool | None = opt(None, "copy the MLM head's transform + LayerNorm from the teacher (false: "
                                            "random init, the reference's default). None: the --recipe's (dstrain: true)")
    student_dropout: str | None = opt(None, "student hidden and attention dropout: teacher (copy the teacher's) or a "
                                      "number (the reference: 0.1). None: the --recipe's (dstrain: teacher)")
    alpha_ce: float = opt(5.0, "weight of the KL(teacher || student) term at temperature T")
    alpha_mlm: float = opt(2.0, "weight of the student's MLM cross-entropy")
    alpha_clm: float = opt(2.0, "weight of the student's next-token cross-entropy (causal-LM teachers, e.g. GPT-2)")
    alpha_cos: float = opt(1.0, "weight of the cosine loss between last hidden states")
    temperature: float = opt(2.0, "softmax temperature T of the KL term (scaled by T^2)")
    restrict_ce_to_mask: bool = opt(False, "KL on the masked positions only (default: every non-pad token)")

    def validate(self) -> None:
        super().validate()
        require(bool(self.teacher), "teacher", "is required: a folder written by save_pretrained or a model name")
        require(self.temperature > 0, "temperature", "must be > 0")
        for a in ("alpha_ce", "alpha_mlm", "alpha_clm", "alpha_cos"):
            require(getattr(self, a) >= 0, a, "must be >= 0")
        require(self.alpha_ce + self.alpha_mlm + self.alpha_clm + self.alpha_cos > 0, "alpha_ce",
                "every loss weight is 0; set at least one of --alpha_ce, --alpha_mlm, --alpha_cos > 0")
        require(self.student_init in ("teacher", "random"), "student_init", "must be teacher or random")
        require(self.student_layers >= 0, "student_layers", "must be >= 0 (0 = half the teacher)")

        parse_dropout(self.student_dropout)


@dataclasses.dataclass
class PretrainConfig(TrainConfig):
    """`pretrain`: a BertForMaskedLM from scratch on the shards' tokenizer, MLM loss only."""

    num_layers: int = opt(12, "transformer layers")
    hidden_size: int = opt(768, "hidden size")
    num_heads: int = opt(12, "attention heads (must divide hidden_size)")
    intermediate_size: int = opt(3072, "feed-forward size")
    max_position_embeddings: int = opt(512, "position embeddings (>= the shards' max_seq_len)")
    dropout: float = opt(0.1, "hidden and attention dropout (BERT: 0.1; tiny models trained briefly learn faster with 0)")

    def validate(self) -> None:
        super().validate()
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        for f in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "max_position_embeddings"):
            require(getattr(self, f) >= 1, f, "must be >= 1")
        require(self.hidden_size % self.num_heads == 0, "num_heads",
                f"must divide --hidden_size {self.hidden_size}")


# ------------------------------------------------------------------------------------------ helpers
def _resolve_path(p: str) -> str:
    """Shipped files (ds_configs/...) work from any working directory."""
    if not Path(p).exists() and (ROOT / p).exists():
        return str(ROOT / p)
    return p


def tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    from transformers import AutoTokenizer

    vocab = AutoTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def check_teacher_vocab(teacher_name: str, teacher_cfg: Any, shards: Any) -> None:
    """The teacher must have been trained on the shards' tokenizer: same vocabulary and special ids."""
    from transformers import AutoTokenizer

    info = shards.tokenizer_info
    v = int(info["vocab_size"])
    # A folder without tokenizer files "loads" a 5-token tokenizer: never compare with it, never advise it.
    has_tok = has_tokenizer(teacher_name)
    rebuild = (f"Rebuild the shards with the teacher's tokenizer (data_prep/build_shards.py --tokenizer {teacher_name})"
               if has_tok else f"{teacher_name} has no tokenizer files: save the tokenizer the teacher was trained "
               f"with into it (tokenizer.save_pretrained), then rebuild the shards with that tokenizer")
    if teacher_cfg.vocab_size < v:
        raise UserError(
            f"--teacher {teacher_name} has a vocabulary of {teacher_cfg.vocab_size} ids but the shards in "
            f"{shards.root} use {v}: they were tokenized with another tokenizer. {rebuild}, or pick the matching teacher.")
    t_tok = None
    if has_tok:
        try:
            t_tok = AutoTokenizer.from_pretrained(teacher_name)
        except (OSError, ValueError, KeyError):
            t_tok = None
    if t_tok is None:
        if teacher_cfg.vocab_size != v:
            raise UserError(f"--teacher {teacher_name} has no usable tokenizer and {teacher_cfg.vocab_size} vocabulary "
                            f"ids, the shards' tokenizer has {v}, so they cannot match. {rebuild}")
        log.warning("--teacher %s has no tokenizer files; only the vocabulary size (%d) could be checked", teacher_name, v)
        return
    s_tok = AutoTokenizer.from_pretrained(str(shards.tokenizer_dir))
    tv, sv = t_tok.get_vocab(), s_tok.get_vocab()
    if tv != sv:
        diff = sorted(set(tv.items()) ^ set(sv.items()))[:3]
        raise UserError(
            f"--teacher {teacher_name}: its tokenizer ({len(tv)} tokens) differs from the one the shards in --data were "
            f"built with ({shards.tokenizer_dir}, {len(sv)} tokens), e.g. {diff}. {rebuild}, or use the teacher that "
            f"matches.")
    for key in ("pad_token_id", "mask_token_id", "cls_token_id", "sep_token_id"):
        if info.get(key) is not None and getattr(t_tok, key, None) is not None and getattr(t_tok, key) != info[key]:
            raise UserError(f"--teacher {teacher_name}: {key} is {getattr(t_tok, key)} but the shards use {info[key]}; "
                            f"rebuild the shards with the teacher's tokenizer")


class Preemption:
    """SIGUSR1/SIGTERM (and SIGINT, Ctrl-C) set a flag; the loop all-reduces it at the next step boundary.

    Installed when the command starts (before the imports and the process group, which take tens of
    seconds), so a signal that Slurm sends during start-up is not lost: the run stops at its first step
    boundary. Once the run has decided to stop, `ignore()` makes further signals harmless: Python restores
    default handlers at interpreter shutdown, and a late SIGUSR1 would then kill a rank that is exiting.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.flag = False
        self.signum = None
        for s in self.SIGNALS:
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if not self.flag:  # the first signal is the reason (after Ctrl-C the launcher adds a SIGTERM)
            self.signum = signum
        self.flag = True

    def ignore(self) -> None:
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """Tensors to the device (asynchronously from the loader's pinned memory on CUDA); host flags stay."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# settings that do not change what a run computes (or, max_steps, only how far): a resume may change them
VOLATILE = {"max_steps", "resume", "save_every", "keep_last", "log_every", "eval_every", "eval_batches",
            "progress", "num_workers", "out_dir", "max_bad_steps", "dist_timeout_minutes", "continue_finished", "compile"}


def _config_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in d.items() if k not in VOLATILE}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def strict_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """`m` as strict JSON can hold it: a non-finite number becomes null and is named in "nonfinite"."""
    bad = {k: repr(v) for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
    out = {k: (None if k in bad else v) for k, v in m.items()}
    if bad:
        out["nonfinite"] = {k: f"{v} (not a number JSON can hold)" for k, v in bad.items()}
    return out


def finished_decision(cfg: TrainConfig, resolved: dict[str, Any], out: Path) -> str | None:
    """What a launch into `out` may do when it holds a finished run (metrics.json, written last, after
    student/): "finished" (nothing to do, exit 0), "continue" (--continue_finished to a larger --max_steps),
    None (not finished). Anything else is refused: a finished run is final unless continued on purpose.
    `resolved` is what this launch would write to config.json (derived batch sizes filled in)."""
    m = out / "metrics.json"
    if not m.is_file():
        return None
    try:
        done = int(json.loads(m.read_text())["step"])
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--out_dir {out}: metrics.json or config.json is unreadable, so whether this run finished "
                        f"is unknown; use a new --out_dir (or delete metrics.json to let the run resume)") from None
    cur = {k: resolved[k] for k in config_to_dict(cfg)}
    changed = sorted(k for k in cur if k not in VOLATILE and k in saved and saved[k] != cur[k])
    where = f"--out_dir {out} holds a run that finished at step {done} (student/, metrics.json)"
    if cfg.max_steps == done and not changed:
        return "finished"
    if cfg.max_steps > done and cfg.continue_finished:
        return "continue"
    if cfg.max_steps > done:
        raise UserError(f"{where}; --max_steps {cfg.max_steps} would continue it and replace student/ and "
                        f"metrics.json. Pass --continue_finished true to do that, or use a new --out_dir.")
    if cfg.max_steps < done:
        raise UserError(f"{where}, beyond --max_steps {cfg.max_steps}; nothing was changed. Use a new --out_dir "
                        f"for a shorter run.")
    diff = ", ".join(f"--{k} {saved[k]} -> {cur[k]}" for k in changed)
    raise UserError(f"{where}, trained with other settings ({diff}); nothing was changed, its config.json still "
                    f"describes its student. Use a new --out_dir to train with these settings.")


def _default_group_timeout(minutes: float) -> None:
    """Make --dist_timeout_minutes the timeout of every process group created from now on. DeepSpeed creates
    its own groups (ZeRO's gradient reduction runs in one) with torch's default timeout, 30 minutes, whatever
    the world group has: a stuck rank then held the others for 30 minutes instead of --dist_timeout_minutes
    (tests/faults/test_signals.py). torch reads these module defaults each time a group is made."""

    c10d.default_pg_timeout = datetime.timedelta(minutes=minutes)
    if hasattr(c10d, "default_pg_nccl_timeout"):
        c10d.default_pg_nccl_timeout = datetime.timedelta(minutes=minutes)


def _export_state_dict(engine, ckpt_root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of the student (rank 0): from the ZeRO partitions of the final checkpoint."""
    if engine.zero_optimization_stage() >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)
    else:
        sd = {k: v.float() for k, v in engine.module.state_dict().items()}
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}


# ------------------------------------------------------------------------------------------ trainer
class Trainer:
    """State of one run. `run()` trains to max_steps or until preempted / diverged."""

    def __init__(self, cfg: TrainConfig, mode: str):
        self.cfg, self.mode = cfg, mode
        self.out = Path(cfg.out_dir)

    # -------------------------------------------------------------- checks (before any process group or output)
    def prepare(self) -> None:
        """Every input check a user can fail: DeepSpeed file, batch arithmetic, shards, teacher, vocabulary,
        resume. Runs before the process group is created, so a bad flag costs seconds and writes nothing."""

        cfg = self.cfg
        check_out_dir(self.out, self.mode, {"data": cfg.data, "ds_config": _resolve_path(cfg.ds_config),
                                            "teacher": getattr(cfg, "teacher", None)})
        world, rank = _world_from_env()
        device_type = runtime_device_type()  # DS_ACCELERATOR=cpu on a GPU host: CPU, as the engine will be
        ds_file = load_ds_config(_resolve_path(cfg.ds_config))
        micro = cfg.micro_batch_size_per_gpu
        if micro is None and cfg.global_batch_size is None:
            micro = 8  # nothing given: a micro-batch that fits any GPU with a BERT-base teacher at seq 512
        m, a, g = derive_batch(micro, cfg.grad_accum_steps, cfg.global_batch_size, world)
        self.ds_cfg, self.precision = resolve_ds_config(
            ds_file, micro_batch_size_per_gpu=m, grad_accum_steps=a, global_batch_size=g, precision=cfg.precision,
            device_type=device_type, gradient_clipping=cfg.grad_clip)
        self.micro, self.accum, self.global_batch = m, a, g
        engine_ds_config(self.ds_cfg, self.precision)

        self.shards = ShardSet.open(cfg.data, "train", strict=cfg.strict_data)
        self.val_shards = ShardSet.open(cfg.data, "val", strict=cfg.strict_data)
        info = self.shards.tokenizer_info
        self.tok_fp = tokenizer_fingerprint(self.shards.tokenizer_dir)

        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device_type == "cuda" else torch.device("cpu")
        if self.mode == "distill":
            # fp32 on CPU: half-precision matmuls there are emulated and slow
            self.teacher = load_teacher(cfg.teacher, dtype=half if device_type == "cuda" else torch.float32,
                                        device=device)
            check_teacher_vocab(cfg.teacher, self.teacher.config, self.shards)
            need_pos = self.shards.max_seq_len
            if self.teacher.config.max_position_embeddings < need_pos:
                raise UserError(f"--teacher {cfg.teacher} has {self.teacher.config.max_position_embeddings} positions "
                                f"but the shards hold sequences of up to {need_pos} tokens; rebuild the shards with "
                                f"--max_seq_len {self.teacher.config.max_position_embeddings}")

            student, self.layer_map = build_student(self.teacher, self.teacher.config, cfg.student_layers or None,
                                                    cfg.layer_map, cfg.student_init, cfg.seed,
                                                    cfg.copy_vocab_transform, parse_dropout(cfg.student_dropout))

            fam = check_shards_match(self.teacher.config, self.shards, cfg)
            self.loss = LossSettings(cfg.alpha_ce, cfg.alpha_clm if fam.causal else cfg.alpha_mlm, cfg.alpha_cos,
                                     cfg.temperature, cfg.restrict_ce_to_mask, lm_term=fam.lm_term)
            self.teacher_fp = teacher_fingerprint(self.teacher)
        else:
            require(cfg.max_position_embeddings >= self.shards.max_seq_len, "max_position_embeddings",
                    f"must be >= the shards' max_seq_len {self.shards.max_seq_len}")
            self.teacher, self.layer_map, self.teacher_fp = None, None, None
            student = build_bert(int(info["vocab_size"]), int(info["pad_token_id"]), cfg.num_layers, cfg.hidden_size,
                                 cfg.num_heads, cfg.intermediate_size, cfg.max_position_embeddings, cfg.seed,
                                 dropout=cfg.dropout)
            self.loss = PRETRAIN_LOSS
        self.student = student
        self.student_config = student.config

        self.ckpt = Checkpointer(self.out, cfg.keep_last, rank, world)
        if cfg.resume == "false" and self.ckpt.has_any():
            raise UserError(f"--out_dir {self.out} already has checkpoints and --resume is false; use --resume auto "
                            f"to continue it, or a new --out_dir")
        if cfg.resume == "true" and self.ckpt._find_resume_local() is None:
            raise UserError(f"--resume true but {self.ckpt.root} holds no checkpoint to resume from; run without "
                            f"--resume true (or with --resume auto) to start a new run")
        self.resolved = {**config_to_dict(cfg), "command": self.mode, "world_size": world,
                         "micro_batch_size_per_gpu": m, "grad_accum_steps": a, "global_batch_size": g,
                         "precision_used": self.precision, "deepspeed": self.ds_cfg, "layer_map_used": self.layer_map,
                         "student_config": self.student_config.to_dict(), "teacher_placement": "replicated"}
        self.config_hash = _config_hash(config_to_dict(cfg))

    # -------------------------------------------------------------- process group, loaders, engine
    def setup(self) -> None:
        import deepspeed

        cfg = self.cfg
        self.dist = dist = init_distributed(cfg.dist_timeout_minutes)
        _default_group_timeout(cfg.dist_timeout_minutes)
        setup_logging(dist.rank)
        self.lock = lock_out_dir(self.out, self.mode, dist.rank, dist.world_size)  # one run per out_dir
        self.device = dist.device
        self.resume_tag = self.ckpt.find_resume() if cfg.resume != "false" else None

        masker = batch_labeler(self.shards, cfg.mlm_probability, cfg.mlm_smoothing, count=cfg.mask_count)
        cuda = self.device.type == "cuda"
        workers = cfg.num_workers
        if workers < 0:  # auto; every reader needs a shard of its own
            workers = min(2, len(self.shards.shard_entries) // dist.world_size) if cuda else 0
            workers = 0 if workers < 2 else workers
        self.loader = build_loader(self.shards, micro_batch_size=self.micro, rank=dist.rank, world_size=dist.world_size,
                                   num_workers=workers, seed=cfg.seed, masker=masker, pin_memory=cuda)
        # uniform masking for evaluation: a fixed, comparable task across runs and steps
        eval_masker = batch_labeler(self.val_shards, cfg.mlm_probability, 0.0)
        self.eval_loader = build_eval_loader(self.val_shards, micro_batch_size=self.micro, rank=dist.rank,
                                             world_size=dist.world_size, seed=cfg.seed, masker=eval_masker)

        # client optimizer + schedule factory: DeepSpeed steps the schedule only on applied (non-skipped) steps
        opt_ = adamw(self.student, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps,
                     fused=self.device.type == "cuda")
        sched = lambda o: torch.optim.lr_scheduler.LambdaLR(o, linear_schedule(cfg.max_steps, cfg.warmup_frac, cfg.warmup_style))  # noqa: E731

        stage = int(self.ds_cfg.get("zero_optimization", {}).get("stage", 0))
        self.compiled = resolve_compile(cfg.compile, self.device.type, stage)
        if self.compiled:
            compile_encoders(self.teacher, self.student)
        self.engine, _, _, _ = deepspeed.initialize(model=StudentForDistill(self.student), optimizer=opt_,
                                                    lr_scheduler=sched, config=self.ds_cfg)
        del self.student  # the engine owns it now (partitioned under ZeRO-3)

    # -------------------------------------------------------------- state
    def _meta(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash, "config": config_to_dict(self.cfg), "teacher_fingerprint": self.teacher_fp,
                "tokenizer_fingerprint": self.tok_fp, "consecutive_bad": self.consecutive_bad,
                "samples_seen": self.samples_seen, "tokens_seen": self.tokens_seen, "mode": self.mode,
                "teacher_metrics": self.teacher_metrics, "loss_terms": self.loss_terms}

    def _rank_state(self) -> dict[str, Any]:
        return {"rng": rng_state(), "loader": self.loader.state_dict()}

    def save(self, step: int, tag: str | None = None, update_latest: bool = True) -> Path:
        if update_latest:  # a checkpoint that may become `latest` must hold finite weights
            bad = self._nonfinite_weights()
            if bad:
                self._diverged(step, step, None, None, None, why=f"the weights hold NaN/inf at step {step} ({bad})")
        t0 = time.time()
        d = self.ckpt.save(self.engine, step, self._meta(), self._rank_state(), tag=tag, update_latest=update_latest)
        log.info("checkpoint %s saved in %.1fs", d, time.time() - t0)
        return d

    def _nonfinite_weights(self) -> str | None:
        """Collective. Which student weights hold NaN/inf (on any rank), for the message; None if all are finite."""

        bad = nonfinite_params(self.engine.module)
        n = torch.tensor([float(len(bad))])
        if self.dist.world_size > 1:
            n = n.to(self.device)
            torch.distributed.all_reduce(n)
        if n.item() == 0:
            return None
        return f"{int(n.item())} tensors over all ranks, e.g. {', '.join(bad[:3]) or 'on another rank'}"

    def _finished_or_continue(self, start: int) -> str | None:
        """Collective. "finished" when this launch repeats a finished run (said, nothing written); when it
        continues one on purpose, the finished run's metrics.json and student/ are removed first, so that an
        interrupted continuation is never taken for finished and config.json always describes student/."""

        what = on_rank0(lambda: finished_decision(self.cfg, self.resolved, self.out))
        if what == "finished":
            log.info("%s already finished at step %d (student/ and metrics.json written); nothing to do",
                     self.out, start)
        elif what == "continue" and self.resume_tag is None:
            raise UserError(f"--continue_finished: {self.ckpt.root} holds no complete checkpoint of the finished run "
                            f"in {self.out} to continue from; use a new --out_dir")
        elif what == "continue" and self.dist.is_main:
            log.warning("--continue_finished: continuing the finished run in %s from step %d to %d; its student/ "
                        "and metrics.json are replaced at the end", self.out, start, self.cfg.max_steps)
            (self.out / "metrics.json").unlink()
            shutil.rmtree(self.out / "student", ignore_errors=True)
        if start > self.cfg.max_steps and what is None:
            raise UserError(f"{self.ckpt.root / str(self.resume_tag)} is at step {start}, beyond --max_steps "
                            f"{self.cfg.max_steps}; relaunch with --max_steps {start} or more, or use a new --out_dir")
        return what

    def restore(self) -> None:
        meta, rs = self.ckpt.load(self.engine, self.resume_tag)
        cur = {"teacher_fingerprint": self.teacher_fp, "tokenizer_fingerprint": self.tok_fp,
               "config_hash": self.config_hash, "config": config_to_dict(self.cfg)}
        check_resume_compatible(meta, cur, str(self.ckpt.root / self.resume_tag))
        self.loader.load_state_dict(rs["loader"])
        set_rng_state(rs["rng"])
        self.consecutive_bad = meta["consecutive_bad"]
        self.samples_seen, self.tokens_seen = meta["samples_seen"], meta["tokens_seen"]
        self.teacher_metrics, self.loss_terms = meta.get("teacher_metrics") or {}, meta.get("loss_terms") or {}
        log.info("resumed from %s at step %d", self.ckpt.root / self.resume_tag, self.engine.global_steps)

    # -------------------------------------------------------------- data
    def _batches(self):
        """Endless micro-batches. The loader moves to the next epoch (new shuffle) by itself and remembers
        its position in `state_dict()`, so a resumed run continues after the last consumed batch."""
        while True:
            it = iter(self.loader)  # leaves the global torch RNG (dropout) alone: tests/data/test_loader.py
            first = next(it, None)
            if first is None:
                raise UserError(f"--data {self.cfg.data}: the train split yields no batch of "
                                f"{self.micro} sequences per rank; lower --micro_batch_size_per_gpu")
            yield first
            yield from it

    # -------------------------------------------------------------- eval
    @torch.no_grad()
    def evaluate(self, model_fn) -> tuple[float, float]:
        """Held-out MLM (loss, accuracy) over the same masked val batches on every call.

        Every rank runs the same number of batches (ZeRO-3 gathers weights collectively)."""

        n_local = len(self.eval_loader)
        n = torch.tensor([min(self.cfg.eval_batches, n_local)], device=self.device)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        n = int(n.item())
        tot = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count
        it = iter(self.eval_loader)
        for _ in range(n):
            b = _to_device(next(it), self.device)
            rows = b["labels"] != IGNORE_INDEX
            _, logits = model_fn(b["input_ids"], b["attention_mask"], rows)
            y = b["labels"][rows]
            c, k = mlm_accuracy(logits, y)
            tot += torch.tensor([float(mlm_ce(logits, y)) * k, c, k], dtype=torch.float64, device=self.device)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(tot)
        if tot[2] == 0:
            return float("nan"), float("nan")
        return float(tot[0] / tot[2]), float(tot[1] / tot[2])

    def eval_student(self) -> tuple[float, float]:
        self.engine.eval()
        try:
            return self.evaluate(lambda i, a, r: self.engine(i, a, r))
        finally:
            self.engine.train()

    # -------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        cfg, dist, engine = self.cfg, self.dist, self.engine
        self.consecutive_bad, self.samples_seen, self.tokens_seen = 0, 0, 0
        self.teacher_metrics, self.loss_terms = {}, {}
        if self.resume_tag is not None:
            self.restore()
        else:
            torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank, reproducibly
        start = engine.global_steps
        if self._finished_or_continue(start) == "finished":
            return {"status": "finished", "step": start}
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", self.resolved)
            (self.out / "PREEMPTED").unlink(missing_ok=True)
        # drop the events logged after the checkpoint
        writer = tb_writer(self.out / "tb", dist.is_main, purge_step=start + 1 if start else None)
        preempt = self.preempt
        # fault injection for the tests (tests/train, tests/faults): see docs/FAULTS.md
        nan_from = int(os.environ.get("DSTRAIN_FAULT_NAN_FROM_STEP", "-1"))
        signal_at = int(os.environ.get("DSTRAIN_FAULT_SIGNAL_AT_STEP", "-1"))

        self._writer, self._bar = writer, None  # closed by _diverged wherever a run stops
        if self.teacher is not None and not self.teacher_metrics:  # a resumed run has them from its checkpoint
            t_loss, t_acc = self.evaluate(lambda i, a, r: mlm_forward(self.teacher, i, a, r))
            self.teacher_metrics = {"teacher_mlm_loss": t_loss, "teacher_mlm_acc": t_acc}
            if writer:
                writer.add_scalar("eval/teacher_mlm_loss", t_loss, 0)
                writer.add_scalar("eval/teacher_mlm_acc", t_acc, 0)
        metrics: dict[str, Any] = dict(self.teacher_metrics)
        bar = None
        if dist.is_main and cfg.progress:

            bar = tqdm(total=cfg.max_steps, initial=start, desc=self.mode, dynamic_ncols=True, mininterval=2.0)
            self._bar = bar
        # FLOPs of what each micro-step computes: its real padded length, the rows it projects (dstrain/flops.py)
        step_flops = StepFlops(self.student_config, self.teacher.config if self.teacher is not None else None, self.loss)
        peak = peak_flops(self.device, self.precision)
        names = ("total", *self.loss.alphas)  # the LM term is "mlm" or "clm" (a causal teacher)
        loss_terms = {k: float("nan") for k in names}  # the log window's mean terms, read at log steps
        # the last logged step's terms; a run relaunched at its last step reports its checkpoint's
        last_terms = {**loss_terms, **self.loss_terms}
        win_sum, win_n, win_flops = None, 0, 0.0  # device sum of the window's per-step means; host FLOP count
        # One GPU in fp16/bf16: DeepSpeed's overflow check (fp16 loss scaler, bf16 check_grad_overflow) already tells
        # a non-finite step (it is skipped), so the loop reads nothing back from the device between log steps.
        # Several ranks must agree on the stop flags every step, and fp32 has no overflow check: one small read.
        read_each_step = dist.world_size > 1 or self.device.type != "cuda" or self.precision == "fp32"
        batches = self._batches()
        # resumed at its last step (stopped between the final save and the export): nothing to save again
        step, last_saved, stop_reason = start, (self.ckpt.root / self.resume_tag if self.resume_tag else None), "max_steps"
        window_t, window_tokens, window_samples = time.time(), 0.0, 0.0
        bad_first = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        while step < cfg.max_steps:
            inject = 0 <= nan_from <= step + 1  # step + 1 is the step being computed (as logged)
            acc = None
            ntok = 0
            for _ in range(self.accum):
                b = _to_device(next(batches), self.device)
                total, terms = micro_step(engine, self.teacher, b, self.loss, nan_injection=inject)
                vals = torch.stack([total.float(), *[terms.get(k, total.new_zeros(())).float() for k in names[1:]]])
                acc = vals if acc is None else acc + vals
                ntok += int(b["tok_index"].shape[0])  # a shape: known on the host, no sync
                win_flops += step_flops.micro_step(b)
            step += 1
            if step == signal_at and dist.rank == dist.world_size - 1:
                os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm would, to one rank only: the others learn it below
            step_vals = acc / self.accum  # (4,) on the device; read at the next log step
            win_sum = step_vals if win_sum is None else win_sum + step_vals
            win_n += 1
            # the data this rank skipped (bad shards found while reading, bad samples): each rank reads its own shards
            st = self.loader.stats
            skipped = [st.get("bad_shards", 0) - len(self.shards.bad_shards), st.get("bad_samples", 0)]
            if read_each_step:
                # one all-reduce: non-finite flag, tokens, preemption flag, skipped data
                red = torch.cat([torch.isfinite(acc).all().logical_not().float().reshape(1),
                                 torch.tensor([ntok, float(preempt.flag), *skipped], device=acc.device)])
                if dist.world_size > 1:
                    torch.distributed.all_reduce(red)
                red = red.tolist()
                nonfinite, step_tokens, stop_flag = red[0] > 0, red[1], red[2] > 0
                bad_shards = len(self.shards.bad_shards) + int(red[3])  # found at open: the same list on every rank
                bad_samples = int(red[4])
            else:
                nonfinite, step_tokens, stop_flag = False, ntok, preempt.flag
                bad_shards, bad_samples = len(self.shards.bad_shards) + int(skipped[0]), int(skipped[1])
            log_now = step % cfg.log_every == 0 or step == cfg.max_steps
            if log_now:  # every rank: the window's mean terms and the last step's, averaged over ranks
                red = torch.cat([win_sum / win_n, step_vals])
                if dist.world_size > 1:
                    torch.distributed.all_reduce(red)
                red = red.tolist()
                loss_terms = {k: red[i] / dist.world_size for i, k in enumerate(names)}
                last_terms = {k: red[4 + i] / dist.world_size for i, k in enumerate(names)}
                win_sum, win_n = None, 0
            self.tokens_seen += int(step_tokens)
            self.samples_seen += self.global_batch
            applied = engine.was_step_applied()
            scale = self._loss_scale()
            min_scale = float(self.ds_cfg.get("fp16", {}).get("min_loss_scale", 1.0))
            bad = nonfinite or (not applied and (self.precision != "fp16" or (scale is not None and scale <= min_scale)))
            if bad:
                bad_first = step if self.consecutive_bad == 0 else bad_first
                self.consecutive_bad += 1
            else:
                self.consecutive_bad = 0
            window_tokens += step_tokens
            window_samples += self.global_batch

            if writer and log_now:
                dt = max(time.time() - window_t, 1e-9)
                s = {f"train/loss_{k}": v for k, v in loss_terms.items()}
                s.update({"train/lr": engine.get_lr()[0], "train/skipped_steps": engine.skipped_steps,
                          "perf/tokens_per_s": window_tokens / dt, "perf/samples_per_s": window_samples / dt,
                          "train/grad_norm": _num(engine.get_global_grad_norm())})
                if scale is not None:
                    s["train/loss_scale"] = scale
                s["data/bad_shards"] = bad_shards  # over all ranks
                s["data/bad_samples"] = bad_samples
                s["data/epoch"] = self.loader.epoch
                if self.device.type == "cuda":
                    s["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
                    if peak:
                        s["perf/mfu"] = win_flops / dt / peak
                log_scalars(writer, s, step)
                window_t, window_tokens, window_samples = time.time(), 0.0, 0.0
            if log_now:
                win_flops = 0.0
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_terms['total']:.3f}", lr=f"{engine.get_lr()[0]:.2e}",
                                skipped=engine.skipped_steps, refresh=False)
            if self.consecutive_bad >= cfg.max_bad_steps:
                self._diverged(step, bad_first, last_saved, writer, bar)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                self._log_eval(writer, step)
            self.loss_terms = last_terms  # into the checkpoint: a relaunch at the last step reports it
            if stop_flag:
                stop_reason = "preempted"
                break
            # never save a step inside a run of bad steps as a normal checkpoint
            if cfg.save_every and step % cfg.save_every == 0 and self.consecutive_bad == 0:
                last_saved = self.save(step)
        if bar is not None:
            bar.close()

        if stop_reason == "max_steps" and self.consecutive_bad:  # the final state is bad: never saved, exported
            self._diverged(step, bad_first, last_saved, writer, None)
        if last_saved is None or last_saved.name != f"step-{step:08d}":
            last_saved = self.save(step)
        if stop_reason == "preempted":
            if dist.is_main:
                atomic_write_text(self.out / "PREEMPTED", json.dumps(
                    {"step": step, "checkpoint": last_saved.name, "signal": preempt.signum}) + "\n")
                log.warning("preempted at step %d: checkpoint %s written; relaunch with --resume auto", step, last_saved)
            if writer:
                writer.close()
            return {"status": "preempted", "step": step}

        s_loss, s_acc = self.eval_student()
        if writer:
            writer.add_scalar("eval/student_mlm_loss", s_loss, step)
            writer.add_scalar("eval/student_mlm_acc", s_acc, step)
        if not math.isfinite(s_loss):
            self._diverged(step, step, last_saved, writer, None,
                           why=f"the final held-out MLM loss of the student is {s_loss}")
        if writer:
            writer.close()
        if dist.is_main:

            sd = _export_state_dict(engine, self.ckpt.root, last_saved.name)
            bad = sorted(k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all())
            if bad:  # the checkpoint check should have stopped the run already; never export such weights
                raise UserError(f"not exporting {self.out / 'student'}: {len(bad)} weight tensors of {last_saved} "
                                f"hold NaN/inf ({', '.join(bad[:3])})")
            model = family_of(self.student_config, "--teacher").auto_class().from_config(self.student_config)
            missing, unexpected = model.load_state_dict(sd, strict=False)
            tied = ("vocab_projector.weight", "decoder.weight", "lm_head.weight")
            if unexpected or [k for k in missing if not k.endswith(tied)]:
                raise RuntimeError(f"export: missing {missing}, unexpected {unexpected}")
            model.tie_weights()
            save_hf_model(model, self.out / "student", self.shards.tokenizer_dir)
            metrics.update(step=step, student_mlm_loss=s_loss, student_mlm_acc=s_acc,
                           train_loss=last_terms.get("total"), skipped_steps=engine.skipped_steps,
                           tokens_seen=self.tokens_seen, samples_seen=self.samples_seen, checkpoint=last_saved.name)
            # written last: its presence marks the run finished (see finished_decision)
            atomic_write_text(self.out / "metrics.json",
                              json.dumps(strict_metrics(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
            log.info("done: step %d, held-out student MLM loss %.4f acc %.4f; student exported to %s",
                     step, s_loss, s_acc, self.out / "student")
        if dist.world_size > 1:
            torch.distributed.barrier()
        return {"status": "done", "step": step, **metrics}

    def _loss_scale(self) -> float | None:
        if self.precision != "fp16":
            return None
        o = self.engine.optimizer
        for attr in ("cur_scale", "loss_scale"):
            v = getattr(o, attr, None)
            if isinstance(v, (int, float)):
                return float(v)
        return None

    def _log_eval(self, writer, step: int) -> None:
        loss, acc = self.eval_student()
        if writer:
            writer.add_scalar("eval/student_mlm_loss", loss, step)
            writer.add_scalar("eval/student_mlm_acc", acc, step)
        log.info("step %d: held-out student MLM loss %.4f acc %.4f", step, loss, acc)

    def _diverged(self, step: int, first: int, last_saved: Path | None, writer, bar, why: str | None = None) -> None:
        """Save the diverged state aside (never as `latest`), write RUN/DIVERGED, stop with a message."""
        d = self.save(step, tag=f"diverged-step-{step:08d}", update_latest=False)
        good = self.ckpt.find_resume()  # collective: every rank reaches here at the same step
        advice = "resume with --resume auto" if why else "lower --lr, raise --warmup_frac, or use bf16, then resume with --resume auto"
        why = why or (f"{self.consecutive_bad} consecutive steps ({first}..{step}) had a non-finite loss or were "
                      f"skipped at the minimum fp16 loss scale")
        msg = (f"training diverged: {why}. The diverged state is in {d} (never resumed from, nothing exported); "
               f"the last good checkpoint is {good or 'none'}: {advice}.")
        if self.dist.is_main:
            atomic_write_text(self.out / "DIVERGED", msg + "\n")
        for w in (writer, self._writer, bar, self._bar):
            if w is not None:
                w.close()
        raise UserError(msg)


def _num(x) -> float | None:
    if x is None:
        return None
    return float(x.item() if torch.is_tensor(x) else x)


def _world_from_env() -> tuple[int, int]:
    """(world size, rank) before the process group exists: launcher variables, Slurm's, or a world of one."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_PROCID"])
    return 1, 0


def _train(cfg: TrainConfig, mode: str, preempt: Preemption) -> dict[str, Any]:
    t = Trainer(cfg, mode)
    t.preempt = preempt
    try:
        t.prepare()
        t.setup()
        return t.run()
    except RuntimeError as e:
        if "timed out" not in str(e).lower():
            raise
        # gloo raises this in the ranks that waited (NCCL's watchdog aborts them instead): one line, no traceback
        raise UserError(
            f"rank {os.environ.get('RANK', '0')}: a collective waited longer than --dist_timeout_minutes "
            f"{cfg.dist_timeout_minutes} for the other ranks, so one of them is stuck or dead ({str(e).splitlines()[0]}). "
            f"The newest complete checkpoint is kept: relaunch with --resume auto once that rank's cause is fixed "
            f"(or raise --dist_timeout_minutes if a step or a save can take longer).") from None
    finally:
        preempt.ignore()  # stopping now: a late signal must not kill this rank on its way out


def distill(**kwargs) -> None:
    """Distil --teacher into a student with half its layers (DistilBERT recipe) on --data shards."""
    preempt = Preemption()  # first thing: see Preemption
    cfg = build_config(DistillConfig, kwargs, "distill")
    _train(cfg, "distill", preempt)  # returns nothing: Fire would print a returned dict on every rank


def pretrain(**kwargs) -> None:
    """Train a BertForMaskedLM from scratch (MLM only) on --data shards; the paper's no-distillation baseline."""
    preempt = Preemption()
    cfg = build_config(PretrainConfig, kwargs, "pretrain")
    _train(cfg, "pretrain", preempt)


distill.config_class = DistillConfig
pretrain.config_class = PretrainConfig
