"""`distill` and `pretrain`: the DeepSpeed trainer (one code path for CPU/gloo and GPU/NCCL).

    # 8 GPUs, the paper's recipe (global batch 4,000 sequences = 10 x 50 x 8):
    deepspeed dstrain/cli.py distill --teacher bert-base-uncased --data shards/ --out_dir runs/d1 \
        --ds_config ds_configs/zero2_fp16.json --micro_batch_size_per_gpu 10 --grad_accum_steps 50 \
        --max_steps 30000
    # one process, CPU, tiny: python dstrain/cli.py distill --teacher T --data S --out_dir R \
    #     --ds_config ds_configs/cpu_zero2.json --max_steps 20
    # a teacher from scratch (MLM only; also the paper's "no distillation" baseline):
    deepspeed dstrain/cli.py pretrain --data shards/ --out_dir runs/t --num_layers 4 --hidden_size 256 ...

The run, in the order the code reads:
    prepare()     every check a user can fail, before any process group or output (a bad flag costs seconds)
    setup()       process group, out_dir lock, loaders, DeepSpeed engine
    run()         resume or start -> train_step() until max_steps or a stop signal -> finish()
    train_step()  grad_accum_steps x micro_step() (dstrain/train/step.py), then the step's bookkeeping:
                  agree with the other ranks on stop flags, log, evaluate, checkpoint
    finish()      final checkpoint; if not preempted: held-out eval, export student/, metrics.json (last)

Placement: the student is the only module DeepSpeed sees (ZeRO 2 or 3 shards its optimizer state,
gradients and, at stage 3, weights). The teacher is *replicated*: a plain frozen module on every
rank (eval mode, no grad, fp16/bf16 on GPU, no optimizer state), outside the engine, so ZeRO-3 never
partitions or hooks it (the crash of DeepSpeed#3175). A BERT-base teacher is 220 MB in fp16.

Step: for each of grad_accum_steps micro-batches: teacher forward under no_grad -> student forward ->
triple loss -> engine.backward (DeepSpeed divides by the accumulation steps) -> engine.step (updates
at the boundary; on an fp16 overflow or non-finite gradient it skips the update and does not advance
the LR schedule). Settings: dstrain/train/config.py. Guarantees on stop, resume and bad input: docs/FAULTS.md.
"""

from __future__ import annotations

import dataclasses
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
from tqdm import tqdm

from dstrain.checkpoint import (Checkpointer, check_resume_compatible, export_student, nonfinite_params, rng_state,
                                set_rng_state)
from dstrain.config import UserError, atomic_write_json, atomic_write_text, config_to_dict, require
from dstrain.data import ShardSet, build_eval_loader, build_loader
from dstrain.data.causal import batch_labeler  # next-token labels on causal-LM block shards, else masking
from dstrain.engine import adamw, engine_ds_config, linear_schedule, log_scalars, tb_writer
from dstrain.families import check_shards_match  # masked or causal LM by the teacher's family
from dstrain.flops import StepFlops, peak_flops
from dstrain.hf_io import tokenizer_fingerprint
from dstrain.losses import IGNORE_INDEX, mlm_accuracy, mlm_ce
from dstrain.models import (StudentForDistill, build_bert, build_student, check_teacher_vocab, load_teacher,
                            mlm_forward, teacher_fingerprint)
from dstrain.outputs import check_out_dir, lock_out_dir
from dstrain.recipe import parse_dropout
from dstrain.runtime import (Preemption, device_type, init_distributed, load_ds_config,
                             resolve_ds_config, setup_logging, world_from_env)
from dstrain.train.config import TrainConfig, config_hash, finished_decision, resolve_path
from dstrain.train.metrics import LossMeter, reduce_by_name, strict_metrics
from dstrain.train.step import PRETRAIN_LOSS, LossSettings, compile_encoders, micro_step, resolve_compile

log = logging.getLogger("dstrain")


@dataclasses.dataclass
class TrainState:
    """What a checkpoint carries besides the engine (weights, optimizer, schedule, step), the data position
    and the RNG: restored by a resume, so a resumed run reports what an uninterrupted one would."""

    consecutive_bad: int = 0  # steps in a row with a non-finite loss or a skip at the minimum fp16 loss scale
    samples_seen: int = 0
    tokens_seen: int = 0
    teacher_metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # held-out, measured once
    loss_terms: dict[str, float] = dataclasses.field(default_factory=dict)  # the last logged step's terms


@dataclasses.dataclass
class Window:
    """The log window (steps since the last log line): throughput and FLOPs, on the host."""

    t0: float = dataclasses.field(default_factory=time.time)
    tokens: float = 0.0
    samples: float = 0.0
    flops: float = 0.0


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    """Tensors to the device (asynchronously from the loader's pinned memory on CUDA); host flags stay."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _num(x) -> float | None:
    if x is None:
        return None
    return float(x.item() if torch.is_tensor(x) else x)


class Trainer:
    """One run: prepare() -> setup() -> run()."""

    def __init__(self, cfg: TrainConfig, mode: str, preempt: Preemption | None = None):
        self.cfg, self.mode, self.preempt = cfg, mode, preempt
        self.out = Path(cfg.out_dir)
        self.state = TrainState()
        self.writer = self.bar = None  # rank 0's TensorBoard writer and progress bar, once run() starts

    # ================================================================ prepare: checks, no group, no output
    def prepare(self) -> None:
        """Every input check a user can fail: DeepSpeed file, batch arithmetic, shards, teacher, vocabulary,
        resume. Runs before the process group is created, so a bad flag costs seconds and writes nothing."""
        cfg = self.cfg
        check_out_dir(self.out, self.mode, {"data": cfg.data, "ds_config": resolve_path(cfg.ds_config),
                                            "teacher": getattr(cfg, "teacher", None)})
        world, rank = world_from_env()
        dev = device_type()  # DS_ACCELERATOR=cpu on a GPU host: CPU, as the engine will be
        self.micro, self.accum, self.global_batch = cfg.batch_sizes(world)
        self.ds_cfg, self.precision = resolve_ds_config(
            load_ds_config(resolve_path(cfg.ds_config)), micro_batch_size_per_gpu=self.micro,
            grad_accum_steps=self.accum, global_batch_size=self.global_batch, precision=cfg.precision,
            device_type=dev, gradient_clipping=cfg.grad_clip)
        engine_ds_config(self.ds_cfg, self.precision)

        self.shards = ShardSet.open(cfg.data, "train", strict=cfg.strict_data)
        self.val_shards = ShardSet.open(cfg.data, "val", strict=cfg.strict_data)
        self.tok_fp = tokenizer_fingerprint(self.shards.tokenizer_dir)
        if self.mode == "distill":
            self._prepare_distill(dev)
        else:
            self._prepare_pretrain()
        self.student_config = self.student.config

        self.ckpt = Checkpointer(self.out, cfg.keep_last, rank, world)
        if cfg.resume == "false" and self.ckpt.has_any():
            raise UserError(f"--out_dir {self.out} already has checkpoints and --resume is false; use --resume auto "
                            f"to continue it, or a new --out_dir")
        if cfg.resume == "true" and not self.ckpt.has_complete():  # verified (hashed) on rank 0 in setup()
            raise UserError(f"--resume true but {self.ckpt.root} holds no checkpoint to resume from; run without "
                            f"--resume true (or with --resume auto) to start a new run")
        self.resolved = {**config_to_dict(cfg), "command": self.mode, "world_size": world,
                         "micro_batch_size_per_gpu": self.micro, "grad_accum_steps": self.accum,
                         "global_batch_size": self.global_batch, "precision_used": self.precision,
                         "deepspeed": self.ds_cfg, "layer_map_used": self.layer_map,
                         "student_config": self.student_config.to_dict(), "teacher_placement": "replicated"}
        self.config_hash = config_hash(config_to_dict(cfg))
        # A finished run relaunched is decided from metrics.json and config.json alone, before any process group
        # or checkpoint load. The commands decide (and announce) it before importing us (dstrain/train/commands.py);
        # here it matters for "continue" (--continue_finished), carried out in run(), under the lock.
        self.finished = finished_decision(cfg, self.out, world)

    def _prepare_distill(self, dev: str) -> None:
        cfg = self.cfg
        half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        # fp32 on CPU: half-precision matmuls there are emulated and slow
        self.teacher = load_teacher(cfg.teacher, dtype=half if dev == "cuda" else torch.float32,
                                    device=torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                                    if dev == "cuda" else torch.device("cpu"))
        check_teacher_vocab(cfg.teacher, self.teacher.config, self.shards)
        if self.teacher.config.max_position_embeddings < self.shards.max_seq_len:
            raise UserError(f"--teacher {cfg.teacher} has {self.teacher.config.max_position_embeddings} positions "
                            f"but the shards hold sequences of up to {self.shards.max_seq_len} tokens; rebuild the "
                            f"shards with --max_seq_len {self.teacher.config.max_position_embeddings}")
        self.student, self.layer_map = build_student(self.teacher, self.teacher.config, cfg.student_layers or None,
                                                     cfg.layer_map, cfg.student_init, cfg.seed,
                                                     cfg.copy_vocab_transform, parse_dropout(cfg.student_dropout))
        fam = check_shards_match(self.teacher.config, self.shards, cfg)
        self.loss = LossSettings(cfg.alpha_ce, cfg.alpha_clm if fam.causal else cfg.alpha_mlm, cfg.alpha_cos,
                                 cfg.temperature, cfg.restrict_ce_to_mask, lm_term=fam.lm_term)
        self.teacher_fp = teacher_fingerprint(self.teacher)

    def _prepare_pretrain(self) -> None:
        cfg, info = self.cfg, self.shards.tokenizer_info
        require(cfg.max_position_embeddings >= self.shards.max_seq_len, "max_position_embeddings",
                f"must be >= the shards' max_seq_len {self.shards.max_seq_len}")
        self.teacher, self.layer_map, self.teacher_fp = None, None, None
        self.student = build_bert(int(info["vocab_size"]), int(info["pad_token_id"]), cfg.num_layers, cfg.hidden_size,
                                  cfg.num_heads, cfg.intermediate_size, cfg.max_position_embeddings, cfg.seed,
                                  dropout=cfg.dropout)
        self.loss = PRETRAIN_LOSS

    # ================================================================ setup: group, lock, loaders, engine
    def setup(self) -> None:
        import deepspeed  # lazy: `distill --help` and the checks above never pay for it

        cfg = self.cfg
        self.dist = dist = init_distributed(cfg.dist_timeout_minutes)
        setup_logging(dist.rank)
        self.lock = lock_out_dir(self.out, self.mode, dist.rank, dist.world_size)  # one run per out_dir
        self.device = dist.device
        self.resume_tag = self.ckpt.find_resume() if cfg.resume != "false" else None  # hashed on rank 0
        if cfg.resume == "true" and self.resume_tag is None:
            raise UserError(f"--resume true but no checkpoint in {self.ckpt.root} verifies (see the log above); "
                            f"relaunch with --resume auto to start a new run, or use a new --out_dir")

        cuda = self.device.type == "cuda"
        workers = cfg.num_workers
        if workers < 0:  # auto; every reader needs a shard of its own
            workers = min(2, len(self.shards.shard_entries) // dist.world_size) if cuda else 0
            workers = 0 if workers < 2 else workers
        masker = batch_labeler(self.shards, cfg.mlm_probability, cfg.mlm_smoothing, count=cfg.mask_count)
        self.loader = build_loader(self.shards, micro_batch_size=self.micro, rank=dist.rank, world_size=dist.world_size,
                                   num_workers=workers, seed=cfg.seed, masker=masker, pin_memory=cuda)
        # uniform masking for evaluation: a fixed, comparable task across runs and steps
        eval_masker = batch_labeler(self.val_shards, cfg.mlm_probability, 0.0)
        self.eval_loader = build_eval_loader(self.val_shards, micro_batch_size=self.micro, rank=dist.rank,
                                             world_size=dist.world_size, seed=cfg.seed, masker=eval_masker)

        # client optimizer + schedule factory: DeepSpeed steps the schedule only on applied (non-skipped) steps
        optimizer = adamw(self.student, cfg.lr, cfg.weight_decay, (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps,
                          fused=cuda)
        schedule = linear_schedule(cfg.max_steps, cfg.warmup_frac, cfg.warmup_style)
        stage = int(self.ds_cfg.get("zero_optimization", {}).get("stage", 0))
        self.compiled = resolve_compile(cfg.compile, self.device.type, stage)
        if self.compiled:
            compile_encoders(self.teacher, self.student)
        self.engine, _, _, _ = deepspeed.initialize(
            model=StudentForDistill(self.student), optimizer=optimizer, config=self.ds_cfg,
            lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, schedule))
        del self.student  # the engine owns it now (partitioned under ZeRO-3)

    # ================================================================ run: the loop
    def run(self) -> dict[str, Any]:
        cfg, dist = self.cfg, self.dist
        if self.resume_tag is not None:
            self.restore()
        else:
            torch.manual_seed(cfg.seed + dist.rank)  # dropout differs per rank, reproducibly
        start = self.engine.global_steps
        self._continue_finished(start)
        if dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / "config.json", self.resolved)
            (self.out / "PREEMPTED").unlink(missing_ok=True)
        self.writer = tb_writer(self.out / "tb", dist.is_main, purge_step=start + 1 if start else None)
        if dist.is_main and cfg.progress:
            self.bar = tqdm(total=cfg.max_steps, initial=start, desc=self.mode, dynamic_ncols=True, mininterval=2.0)
        if self.teacher is not None and not self.state.teacher_metrics:  # a resumed run has them from its checkpoint
            t_loss, t_acc = self.evaluate(lambda i, a, r: mlm_forward(self.teacher, i, a, r))
            self.state.teacher_metrics = {"teacher_mlm_loss": t_loss, "teacher_mlm_acc": t_acc}
            self._scalars({"eval/teacher_mlm_loss": t_loss, "eval/teacher_mlm_acc": t_acc}, 0)

        # FLOPs of what each micro-step computes: its real padded length, the rows it projects (dstrain/flops.py)
        self.step_flops = StepFlops(self.student_config, self.teacher.config if self.teacher is not None else None,
                                    self.loss)
        self.peak = peak_flops(self.device, self.precision)
        self.meter = LossMeter(("total", *self.loss.alphas))  # the LM term is "mlm" or "clm" (a causal teacher)
        self.window_terms = {k: float("nan") for k in self.meter.names}  # the log window's mean terms
        # the last logged step's terms; a run relaunched at its last step reports its checkpoint's
        self.last_terms = {**self.window_terms, **self.state.loss_terms}
        self.window = Window()
        # One GPU in fp16/bf16: DeepSpeed's overflow check (fp16 loss scaler, bf16 check_grad_overflow) already tells
        # a non-finite step (it is skipped), so the loop reads nothing back from the device between log steps.
        # Several ranks must agree on the stop flags every step, and fp32 has no overflow check: one small read.
        self.read_each_step = dist.world_size > 1 or self.device.type != "cuda" or self.precision == "fp32"
        # fault injection for the tests (tests/train, tests/faults): see docs/FAULTS.md
        self.nan_from = int(os.environ.get("DSTRAIN_FAULT_NAN_FROM_STEP", "-1"))
        self.signal_at = int(os.environ.get("DSTRAIN_FAULT_SIGNAL_AT_STEP", "-1"))
        self.batches = self._batches()
        # resumed at its last step (stopped between the final save and the export): nothing to save again
        self.step = start
        self.last_saved = self.ckpt.root / self.resume_tag if self.resume_tag else None
        self.bad_first = None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        stop_reason = "max_steps"
        while self.step < cfg.max_steps:
            if self.train_step():
                stop_reason = "preempted"
                break
        return self.finish(stop_reason)

    def train_step(self) -> bool:
        """One optimizer step and its bookkeeping. Returns True when the run must stop (a stop signal)."""
        cfg, engine = self.cfg, self.engine
        inject = 0 <= self.nan_from <= self.step + 1  # step + 1 is the step being computed (as logged)
        ntok = 0
        for _ in range(self.accum):
            b = _to_device(next(self.batches), self.device)
            total, terms = micro_step(engine, self.teacher, b, self.loss, nan_injection=inject)
            self.meter.add(total, terms)
            ntok += int(b["tok_index"].shape[0])  # a shape: known on the host, no sync
            self.window.flops += self.step_flops.micro_step(b)
        self.step += 1
        step = self.step
        nonfinite_flag = self.meter.end_step()
        if step == self.signal_at and self.dist.rank == self.dist.world_size - 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm would, to one rank only: the others learn it below
        flags = self._agree(nonfinite_flag, ntok)
        self.state.tokens_seen += int(flags["tokens"])
        self.state.samples_seen += self.global_batch
        self.window.tokens += flags["tokens"]
        self.window.samples += self.global_batch

        applied = engine.was_step_applied()
        scale = self._loss_scale()
        min_scale = float(self.ds_cfg.get("fp16", {}).get("min_loss_scale", 1.0))
        bad = flags["nonfinite"] > 0 or (not applied and (self.precision != "fp16" or
                                                           (scale is not None and scale <= min_scale)))
        if bad:
            self.bad_first = step if self.state.consecutive_bad == 0 else self.bad_first
            self.state.consecutive_bad += 1
        else:
            self.state.consecutive_bad = 0

        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self._log_step(step, flags, scale)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{self.window_terms['total']:.3f}", lr=f"{engine.get_lr()[0]:.2e}",
                                 skipped=engine.skipped_steps, refresh=False)
        if self.state.consecutive_bad >= cfg.max_bad_steps:
            self._diverged(step, self.bad_first)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
            self._log_eval(step)
        self.state.loss_terms = self.last_terms  # into the checkpoint: a relaunch at the last step reports it
        if flags["stop"] > 0:
            return True
        # never save a step inside a run of bad steps as a normal checkpoint
        if cfg.save_every and step % cfg.save_every == 0 and self.state.consecutive_bad == 0:
            self.last_saved = self.save(step)
        return False

    def _agree(self, nonfinite_flag: torch.Tensor, ntok: int) -> dict[str, float]:
        """The step's flags, agreed by every rank: a non-finite loss anywhere, tokens over all ranks, a stop
        signal on any rank, and the data skipped (bad shards found while reading, bad samples): each rank
        reads its own shards. Several ranks (or no overflow check): one all-reduce, read back every step."""
        st = self.loader.stats
        local = {"nonfinite": nonfinite_flag, "tokens": ntok, "stop": float(self.preempt.flag),
                 "bad_shards_read": st.get("bad_shards", 0) - len(self.shards.bad_shards),
                 "bad_samples": st.get("bad_samples", 0)}
        if self.read_each_step:
            flags = reduce_by_name(local, self.device, self.dist.world_size)
        else:  # one GPU in half precision: DeepSpeed's overflow check reports a non-finite step
            flags = {**local, "nonfinite": 0.0, "tokens": float(ntok)}
        flags["bad_shards"] = len(self.shards.bad_shards) + int(flags["bad_shards_read"])  # found at open: same list on every rank
        return flags

    def _log_step(self, step: int, flags: dict[str, float], scale: float | None) -> None:
        """Every rank (a collective): the window's mean terms and the last step's, averaged over ranks; then
        rank 0 writes the TensorBoard scalars."""
        self.window_terms, self.last_terms = self.meter.read(self.device, self.dist.world_size)
        w, engine = self.window, self.engine
        self.window = Window()
        if self.writer is None:  # not rank 0: nothing more to read back
            return
        dt = max(time.time() - w.t0, 1e-9)
        s = {f"train/loss_{k}": v for k, v in self.window_terms.items()}
        s.update({"train/lr": engine.get_lr()[0], "train/skipped_steps": engine.skipped_steps,
                  "perf/tokens_per_s": w.tokens / dt, "perf/samples_per_s": w.samples / dt,
                  "train/grad_norm": _num(engine.get_global_grad_norm()),
                  "data/bad_shards": flags["bad_shards"], "data/bad_samples": int(flags["bad_samples"]),
                  "data/epoch": self.loader.epoch})
        if scale is not None:
            s["train/loss_scale"] = scale
        if self.device.type == "cuda":
            s["perf/peak_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
            if self.peak:
                s["perf/mfu"] = w.flops / dt / self.peak
        self._scalars(s, step)

    # ================================================================ finish: save, evaluate, export
    def finish(self, stop_reason: str) -> dict[str, Any]:
        """The end of a run: the final checkpoint; then, unless preempted, the held-out evaluation, the export
        of student/ and metrics.json, written last (its presence marks the run finished)."""
        step, dist = self.step, self.dist
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if stop_reason == "max_steps" and self.state.consecutive_bad:  # the final state is bad: never saved, exported
            self._diverged(step, self.bad_first)
        if self.last_saved is None or self.last_saved.name != f"step-{step:08d}":
            self.last_saved = self.save(step)
        if stop_reason == "preempted":
            if dist.is_main:
                atomic_write_text(self.out / "PREEMPTED", json.dumps(
                    {"step": step, "checkpoint": self.last_saved.name, "signal": self.preempt.signum}) + "\n")
                log.warning("preempted at step %d: checkpoint %s written; relaunch with --resume auto", step,
                            self.last_saved)
            self._close()
            return {"status": "preempted", "step": step}

        s_loss, s_acc = self.eval_student()
        self._scalars({"eval/student_mlm_loss": s_loss, "eval/student_mlm_acc": s_acc}, step)
        if not math.isfinite(s_loss):
            self._diverged(step, step, why=f"the final held-out MLM loss of the student is {s_loss}")
        self._close()
        metrics: dict[str, Any] = dict(self.state.teacher_metrics)
        if dist.is_main:
            export_student(self.engine, self.ckpt.root, self.last_saved.name, self.student_config,
                           self.out / "student", self.shards.tokenizer_dir)
            metrics.update(step=step, student_mlm_loss=s_loss, student_mlm_acc=s_acc,
                           train_loss=self.last_terms.get("total"), skipped_steps=self.engine.skipped_steps,
                           tokens_seen=self.state.tokens_seen, samples_seen=self.state.samples_seen,
                           checkpoint=self.last_saved.name)
            # written last: its presence marks the run finished (see finished_decision)
            atomic_write_text(self.out / "metrics.json",
                              json.dumps(strict_metrics(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n")
            log.info("done: step %d, held-out student MLM loss %.4f acc %.4f; student exported to %s",
                     step, s_loss, s_acc, self.out / "student")
        if dist.world_size > 1:
            torch.distributed.barrier()
        return {"status": "done", "step": step, **metrics}

    def _close(self) -> None:
        for w in (self.writer, self.bar):
            if w is not None:
                w.close()
        self.writer = self.bar = None

    def _diverged(self, step: int, first: int, why: str | None = None) -> None:
        """Save the diverged state aside (never as `latest`), write RUN/DIVERGED, stop with a message."""
        d = self.save(step, tag=f"diverged-step-{step:08d}", update_latest=False)
        good = self.ckpt.find_resume()  # collective: every rank reaches here at the same step
        advice = "resume with --resume auto" if why else "lower --lr, raise --warmup_frac, or use bf16, then resume with --resume auto"
        why = why or (f"{self.state.consecutive_bad} consecutive steps ({first}..{step}) had a non-finite loss or "
                      f"were skipped at the minimum fp16 loss scale")
        msg = (f"training diverged: {why}. The diverged state is in {d} (never resumed from, nothing exported); "
               f"the last good checkpoint is {good or 'none'}: {advice}.")
        if self.dist.is_main:
            atomic_write_text(self.out / "DIVERGED", msg + "\n")
        self._close()
        raise UserError(msg)

    # ================================================================ checkpoints
    def _meta(self) -> dict[str, Any]:
        return {"config_hash": self.config_hash, "config": config_to_dict(self.cfg), "teacher_fingerprint": self.teacher_fp,
                "tokenizer_fingerprint": self.tok_fp, "mode": self.mode, **dataclasses.asdict(self.state)}

    def save(self, step: int, tag: str | None = None, update_latest: bool = True) -> Path:
        if update_latest:  # a checkpoint that may become `latest` must hold finite weights
            bad = self._nonfinite_weights()
            if bad:
                self._diverged(step, step, why=f"the weights hold NaN/inf at step {step} ({bad})")
        t0 = time.time()
        d = self.ckpt.save(self.engine, step, self._meta(), {"rng": rng_state(), "loader": self.loader.state_dict()},
                           tag=tag, update_latest=update_latest)
        log.info("checkpoint %s saved in %.1fs", d, time.time() - t0)
        return d

    def _nonfinite_weights(self) -> str | None:
        """Collective. Which student weights hold NaN/inf (on any rank), for the message; None if all are finite."""
        bad = nonfinite_params(self.engine.module)
        n = int(reduce_by_name({"bad_tensors": len(bad)}, self.device, self.dist.world_size)["bad_tensors"])
        if n == 0:
            return None
        return f"{n} tensors over all ranks, e.g. {', '.join(bad[:3]) or 'on another rank'}"

    def restore(self) -> None:
        meta, rs = self.ckpt.load(self.engine, self.resume_tag)
        cur = {"teacher_fingerprint": self.teacher_fp, "tokenizer_fingerprint": self.tok_fp,
               "config_hash": self.config_hash, "config": config_to_dict(self.cfg)}
        check_resume_compatible(meta, cur, str(self.ckpt.root / self.resume_tag))
        self.loader.load_state_dict(rs["loader"])
        set_rng_state(rs["rng"])
        self.state = TrainState(consecutive_bad=meta["consecutive_bad"], samples_seen=meta["samples_seen"],
                                tokens_seen=meta["tokens_seen"], teacher_metrics=meta.get("teacher_metrics") or {},
                                loss_terms=meta.get("loss_terms") or {})
        log.info("resumed from %s at step %d", self.ckpt.root / self.resume_tag, self.engine.global_steps)

    def _continue_finished(self, start: int) -> None:
        """Collective. With --continue_finished (prepare() decided "continue"), remove the finished run's
        metrics.json and student/ first, so that an interrupted continuation is never taken for finished and
        config.json always describes student/."""
        if self.finished == "continue" and self.resume_tag is None:
            raise UserError(f"--continue_finished: {self.ckpt.root} holds no complete checkpoint of the finished run "
                            f"in {self.out} to continue from; use a new --out_dir")
        if self.finished == "continue" and self.dist.is_main:
            log.warning("--continue_finished: continuing the finished run in %s from step %d to %d; its student/ "
                        "and metrics.json are replaced at the end", self.out, start, self.cfg.max_steps)
            (self.out / "metrics.json").unlink()
            shutil.rmtree(self.out / "student", ignore_errors=True)
        if start > self.cfg.max_steps:
            raise UserError(f"{self.ckpt.root / str(self.resume_tag)} is at step {start}, beyond --max_steps "
                            f"{self.cfg.max_steps}; relaunch with --max_steps {start} or more, or use a new --out_dir")

    # ================================================================ data, evaluation, logging
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

    @torch.no_grad()
    def evaluate(self, model_fn) -> tuple[float, float]:
        """Held-out MLM (loss, accuracy) over the same masked val batches on every call.

        Every rank runs the same number of batches (ZeRO-3 gathers weights collectively)."""
        n = torch.tensor([min(self.cfg.eval_batches, len(self.eval_loader))], device=self.device)
        if self.dist.world_size > 1:
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
        loss_sum, correct, count = (torch.zeros((), dtype=torch.float64, device=self.device) for _ in range(3))
        it = iter(self.eval_loader)
        for _ in range(int(n.item())):
            b = _to_device(next(it), self.device)
            rows = b["labels"] != IGNORE_INDEX
            _, logits = model_fn(b["input_ids"], b["attention_mask"], rows)
            y = b["labels"][rows]
            c, k = mlm_accuracy(logits, y)
            loss_sum += float(mlm_ce(logits, y)) * k
            correct += c
            count += k
        tot = reduce_by_name({"loss_sum": loss_sum, "correct": correct, "count": count}, self.device,
                             self.dist.world_size)
        if tot["count"] == 0:
            return float("nan"), float("nan")
        return tot["loss_sum"] / tot["count"], tot["correct"] / tot["count"]

    def eval_student(self) -> tuple[float, float]:
        self.engine.eval()
        try:
            return self.evaluate(lambda i, a, r: self.engine(i, a, r))
        finally:
            self.engine.train()

    def _log_eval(self, step: int) -> None:
        loss, acc = self.eval_student()
        self._scalars({"eval/student_mlm_loss": loss, "eval/student_mlm_acc": acc}, step)
        log.info("step %d: held-out student MLM loss %.4f acc %.4f", step, loss, acc)

    def _scalars(self, s: dict[str, Any], step: int) -> None:
        if self.writer is not None:
            log_scalars(self.writer, s, step)

    def _loss_scale(self) -> float | None:
        if self.precision != "fp16":
            return None
        o = self.engine.optimizer
        for attr in ("cur_scale", "loss_scale"):
            v = getattr(o, attr, None)
            if isinstance(v, (int, float)):
                return float(v)
        return None


def train(cfg: TrainConfig, mode: str, preempt: Preemption) -> dict[str, Any]:
    """The run of `distill` or `pretrain` (dstrain/train/commands.py builds `cfg` and calls this)."""
    t = Trainer(cfg, mode, preempt)
    try:
        t.prepare()
        if t.finished == "finished":
            return {"status": "finished", "step": cfg.max_steps}
        t.setup()
        return t.run()
    except UserError:
        t._close()  # the events logged so far reach the disk
        raise
    except RuntimeError as e:
        if "timed out" not in str(e).lower():
            raise
        t._close()
        # gloo raises this in the ranks that waited (NCCL's watchdog aborts them instead): one line, no traceback
        raise UserError(
            f"rank {os.environ.get('RANK', '0')}: a collective waited longer than --dist_timeout_minutes "
            f"{cfg.dist_timeout_minutes} for the other ranks, so one of them is stuck or dead ({str(e).splitlines()[0]}). "
            f"The newest complete checkpoint is kept: relaunch with --resume auto once that rank's cause is fixed "
            f"(or raise --dist_timeout_minutes if a step or a save can take longer).") from None
    finally:
        preempt.ignore()  # stopping now: a late signal must not kill this rank on its way out
        t.batches = None  # the batch generator refers to the trainer: without it the trainer is freed on return
