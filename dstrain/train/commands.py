"""The `distill` and `pretrain` commands: their settings, then the run (dstrain/train/run.py).

A finished run relaunched (the same command again, a requeued Slurm job that had finished) is decided here,
from metrics.json and config.json alone, before torch, transformers and DeepSpeed are imported: each rank
then exits in a fraction of a second instead of paying its ~7 CPU-seconds of imports to do nothing. Every
other launch goes on to `run.train`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dstrain.config import build_config
from dstrain.outputs import check_out_dir
from dstrain.runtime import Preemption, setup_logging, world_from_env
from dstrain.train.config import DistillConfig, PretrainConfig, TrainConfig, finished_decision, resolve_path

log = logging.getLogger("dstrain")


def distill(**kwargs) -> None:
    """Distil --teacher into a student with half its layers (DistilBERT recipe) on --data shards."""
    preempt = Preemption()  # first thing: see Preemption
    _run(build_config(DistillConfig, kwargs, "distill"), "distill", preempt)


def pretrain(**kwargs) -> None:
    """Train a BertForMaskedLM from scratch (MLM only) on --data shards; the paper's no-distillation baseline."""
    preempt = Preemption()
    _run(build_config(PretrainConfig, kwargs, "pretrain"), "pretrain", preempt)


distill.config_class = DistillConfig
pretrain.config_class = PretrainConfig


def _run(cfg: TrainConfig, mode: str, preempt: Preemption) -> None:
    if _finished(cfg, mode):
        return
    from dstrain.train.run import train  # torch, transformers, DeepSpeed: only for a launch that trains

    train(cfg, mode, preempt)  # returns nothing here: Fire would print a returned dict on every rank


def _finished(cfg: TrainConfig, mode: str) -> bool:
    """True when --out_dir holds this very run, finished (say so, nothing to do); a finished run with other
    settings raises the UserError that names them. The folder checks come first, as in Trainer.prepare."""
    out = Path(cfg.out_dir)
    check_out_dir(out, mode, {"data": cfg.data, "ds_config": resolve_path(cfg.ds_config),
                              "teacher": getattr(cfg, "teacher", None)})
    if not (out / "metrics.json").is_file():
        return False
    world, rank = world_from_env()
    if finished_decision(cfg, out, world) != "finished":
        return False
    setup_logging(rank)
    log.info("%s already finished at step %d (student/ and metrics.json written); nothing to do", out, cfg.max_steps)
    return True
