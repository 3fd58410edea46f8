"""Settings of `distill` and `pretrain`, one dataclass each (`--help` prints every field with its help),
and what a relaunch into an existing run folder may do with them (`finished_decision`).

Validation names the flag to change (`dstrain.config.require`). `--recipe` (dstrain/recipe.py) fills the
settings where the reference code chose differently and the user gave no value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from dstrain.config import UserError, config_to_dict, opt, require
from dstrain.recipe import StudentSettings, apply_recipe
from dstrain.runtime import derive_batch

ROOT = Path(__file__).resolve().parent.parent.parent


def resolve_path(p: str) -> str:
    """Shipped files (ds_configs/...) work from any working directory."""
    if not Path(p).exists() and (ROOT / p).exists():
        return str(ROOT / p)
    return p


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

    def batch_sizes(self, world_size: int) -> tuple[int, int, int]:
        """(micro-batch per rank, accumulation steps, global batch) of this launch on `world_size` ranks."""
        micro = self.micro_batch_size_per_gpu
        if micro is None and self.global_batch_size is None:
            micro = 8  # nothing given: a micro-batch that fits any GPU with a BERT-base teacher at seq 512
        return derive_batch(micro, self.grad_accum_steps, self.global_batch_size, world_size)


@dataclasses.dataclass
class DistillConfig(StudentSettings, TrainConfig):
    """`distill`: a student from --teacher trained with the triple loss (the student's settings:
    dstrain/recipe.py `StudentSettings`, shared with `init_student`)."""

    alpha_ce: float = opt(5.0, "weight of the KL(teacher || student) term at temperature T")
    alpha_mlm: float = opt(2.0, "weight of the student's MLM cross-entropy")
    alpha_clm: float = opt(2.0, "weight of the student's next-token cross-entropy (causal-LM teachers, e.g. GPT-2)")
    alpha_cos: float = opt(1.0, "weight of the cosine loss between last hidden states")
    temperature: float = opt(2.0, "softmax temperature T of the KL term (scaled by T^2)")
    restrict_ce_to_mask: bool = opt(False, "KL on the masked positions only (default: every non-pad token)")

    def validate(self) -> None:
        super().validate()
        self.validate_student()
        require(self.temperature > 0, "temperature", "must be > 0")
        for a in ("alpha_ce", "alpha_mlm", "alpha_clm", "alpha_cos"):
            require(getattr(self, a) >= 0, a, "must be >= 0")
        require(self.alpha_ce + self.alpha_mlm + self.alpha_clm + self.alpha_cos > 0, "alpha_ce",
                "every loss weight is 0; set at least one of --alpha_ce, --alpha_mlm, --alpha_cos > 0")


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


# settings that do not change what a run computes (or, max_steps, only how far): a resume may change them
VOLATILE = {"max_steps", "resume", "save_every", "keep_last", "log_every", "eval_every", "eval_batches",
            "progress", "num_workers", "out_dir", "max_bad_steps", "dist_timeout_minutes", "continue_finished", "compile"}


def config_hash(d: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps({k: v for k, v in d.items() if k not in VOLATILE}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def finished_decision(cfg: TrainConfig, out: Path, world_size: int) -> str | None:
    """What a launch into `out` may do when it holds a finished run (metrics.json, written last, after
    student/): "finished" (nothing to do, exit 0), "continue" (--continue_finished to a larger --max_steps),
    None (not finished). Anything else is refused: a finished run is final unless continued on purpose.
    Compared with config.json: the launch's settings, with the batch sizes derived for `world_size` ranks
    as it would write them."""
    m = out / "metrics.json"
    if not m.is_file():
        return None
    try:
        done = int(json.loads(m.read_text())["step"])
        saved = json.loads((out / "config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"--out_dir {out}: metrics.json or config.json is unreadable, so whether this run finished "
                        f"is unknown; use a new --out_dir (or delete metrics.json to let the run resume)") from None
    micro, accum, global_batch = cfg.batch_sizes(world_size)
    cur = {**config_to_dict(cfg), "micro_batch_size_per_gpu": micro, "grad_accum_steps": accum,
           "global_batch_size": global_batch}
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
