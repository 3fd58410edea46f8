"""`finetune`: fine-tune any Hugging Face model folder on a GLUE task, SQuAD v1.1 or shakespeare_genre.

    python dstrain/cli.py finetune --model runs/d1/student --task sst2 --out_dir runs/ft-sst2
    deepspeed dstrain/cli.py finetune --model bert-base-uncased --task squad --out_dir runs/ft-squad
    python dstrain/cli.py finetune --model runs/d1/student --task squad --teacher runs/bert-squad/model \
        --out_dir runs/ft-squad-distilled         # second distillation step (docs/METHOD.md)
    python dstrain/cli.py finetune --model M --task rte --num_seeds 5 --out_dir runs/rte   # median of 5

Training goes through a DeepSpeed engine (ds_configs/finetune_cpu.json or finetune_gpu.json by default);
evaluation is split across ranks and gathered on rank 0. Each run writes RUN/config.json, RUN/tb/,
RUN/model/ (HF folder with the tokenizer), RUN/predictions.jsonl (SQuAD: predictions.json in the official
format and nbest_predictions.json) and, last, RUN/metrics.json. With --num_seeds N > 1 each seed runs in
RUN/seed-S/ and RUN/metrics.json holds the median of every metric over the seeds.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import random
import re
import statistics
import time
from pathlib import Path

# torch, transformers, deepspeed and what imports them (dstrain.engine, dstrain.models, .losses) stay inside the
# functions: `finetune --help` loads none of them
from dstrain.config import (ConfigError, UserError, atomic_write_json, atomic_write_text, build_config, config_to_dict,
                            opt, require)
from dstrain.families import check_model as check_family
from dstrain.finetune import squad as squad_lib
from dstrain.finetune.metrics import classification_metrics
from dstrain.finetune.tasks import SQUAD_TASK, check_task_name, get_task, load_examples
from dstrain.hf_io import has_tokenizer, load_pretrained, require_tokenizer
from dstrain.outputs import check_out_dir, foreign_entries, lock_out_dir, read_marker, remove_owned
from dstrain.runtime import derive_batch, init_distributed, load_ds_config, resolve_ds_config, setup_logging

log = logging.getLogger("dstrain.finetune")
ROOT = Path(__file__).resolve().parent.parent.parent


@dataclasses.dataclass
class FinetuneConfig:
    model: str = opt("", "Hugging Face model folder (or hub name) to fine-tune: BERT, DistilBERT, RoBERTa, ...")
    task: str = opt("", "cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, squad, shakespeare_genre or shakespeare_genre3")
    out_dir: str = opt("", "run folder for config.json, tb/, model/, predictions and metrics.json")
    data_dir: str = opt("", "local data: GLUE TSVs (train.tsv, dev.tsv), CSV or JSONL; SQuAD official JSON. "
                            "Empty: datasets.load_dataset from the hub")
    tokenizer: str = opt("", "tokenizer folder; empty: the --model folder's")
    seed: int = opt(42, "random seed (with --num_seeds N: seeds seed .. seed+N-1)")
    num_seeds: int = opt(1, "run N seeds and report the median of each metric, as the paper does")
    lr: float = opt(5e-5, "peak AdamW learning rate (paper: 2e-5 .. 5e-5)")
    weight_decay: float = opt(0.0, "AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = opt(0.0, "fraction of the optimizer steps with linear warmup, then linear decay to 0")
    epochs: float = opt(3.0, "training epochs (paper: 3)")
    max_steps: int = opt(0, "stop after this many optimizer steps (0: run --epochs)")
    max_seq_length: int = opt(0, "tokens per input; 0: 128 for GLUE and the genre task, 384 for SQuAD")
    doc_stride: int = opt(128, "SQuAD: overlap in tokens between windows of a long context")
    n_best_size: int = opt(20, "SQuAD: start/end candidates per window in span decoding")
    max_answer_length: int = opt(30, "SQuAD: longest answer in tokens")
    micro_batch_size_per_gpu: int | None = opt(None, "examples per rank per forward pass (derived if unset)")
    grad_accum_steps: int | None = opt(None, "micro-batches per optimizer step (derived if unset)")
    global_batch_size: int | None = opt(32, "examples per optimizer step over all ranks")
    eval_batch_size_per_gpu: int = opt(64, "examples per rank per forward pass in evaluation")
    ds_config: str = opt("", "DeepSpeed JSON; empty: ds_configs/finetune_gpu.json on CUDA, finetune_cpu.json otherwise")
    precision: str = opt("config", "config (the DeepSpeed file's), fp16, bf16 or fp32")
    gradient_clipping: float = opt(1.0, "max gradient norm")
    teacher: str = opt("", "fine-tuned teacher folder for a second distillation step (same task and vocabulary)")
    alpha_ce: float = opt(0.5, "weight of the distillation term (KL to the teacher; MSE for stsb)")
    alpha_task: float = opt(0.5, "weight of the task loss when --teacher is set")
    temperature: float = opt(2.0, "softmax temperature T of the distillation term")
    max_train_examples: int = opt(0, "use N evenly spaced training examples (0: all); for quick runs")
    max_eval_examples: int = opt(0, "evaluate N evenly spaced examples of each eval split (0: all)")
    log_every: int = opt(10, "optimizer steps between TensorBoard/log lines of the training losses")
    overwrite: bool = opt(False, "replace the results of an earlier run in --out_dir")

    def validate(self) -> None:
        require(bool(self.model), "model", "required: a Hugging Face model folder to fine-tune")
        require(bool(self.task), "task", "required: a task name, e.g. sst2 or squad")
        require(bool(self.out_dir), "out_dir", "required: the run folder to write results into")
        check_task_name(self.task)
        require(self.num_seeds >= 1, "num_seeds", f"must be >= 1, got {self.num_seeds}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.epochs > 0 or self.max_steps > 0, "epochs", "must be > 0 (or set --max_steps)")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.max_seq_length == 0 or self.max_seq_length >= 16, "max_seq_length",
                f"must be >= 16 (or 0 for the task default), got {self.max_seq_length}")
        require(self.doc_stride >= 1, "doc_stride", f"must be >= 1, got {self.doc_stride}")
        require(self.eval_batch_size_per_gpu >= 1, "eval_batch_size_per_gpu", "must be >= 1")
        require(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        require(self.alpha_ce >= 0 and self.alpha_task >= 0, "alpha_ce", "the loss weights must be >= 0")
        require(self.log_every >= 1, "log_every", "must be >= 1")
        require(self.max_train_examples >= 0 and self.max_eval_examples >= 0, "max_train_examples",
                "--max_train_examples and --max_eval_examples must be >= 0 (0: all)")
        require(self.precision in ("config", "fp16", "bf16", "fp32"), "precision",
                f"must be one of config, fp16, bf16, fp32; got {self.precision!r}")

    def seq_len(self) -> int:
        return self.max_seq_length or (384 if self.task == SQUAD_TASK else 128)


# --------------------------------------------------------------------------------------------- helpers


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _check_model_dir(path: str, setting: str, need_config: bool = True) -> None:
    """A local folder must hold config.json; a name like `bert-base-uncased` or `org/name` that is not a
    folder here is left to the hub (or its cache); anything else is a missing folder."""
    p = Path(path)
    if p.is_dir():
        if need_config and not (p / "config.json").is_file():
            raise UserError(f"--{setting} {p}: not a Hugging Face model folder (no config.json); pass the folder "
                            f"written by save_pretrained (e.g. RUN/student from distill)")
    elif p.exists() or not _HUB_NAME.match(path):
        raise UserError(f"--{setting} {p}: no such folder")


def _load_tokenizer(path: str, setting: str):
    from transformers import AutoTokenizer

    # a model folder without tokenizer files would "load" a 5-token tokenizer that maps every word to [UNK]
    require_tokenizer(path, setting, "Pass --tokenizer with the folder of the tokenizer the model was trained "
                                     "with (for a distill or pretrain run: its --data folder's tokenizer/)")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise UserError(f"--{setting} {path}: could not load a tokenizer ({e}). Pass --tokenizer with the "
                        f"folder of the tokenizer the model was trained with.") from None


# What a finetune run writes into --out_dir: all that --overwrite may replace.
OWNED = ("config.json", "tb", "model", "predictions.json", "predictions.jsonl", "nbest_predictions.json",
         "metrics.json", "seed-*", "*.tmp-*")


def _prepare_out_dir(cfg: FinetuneConfig) -> Path:
    out = Path(cfg.out_dir)
    marker = check_out_dir(out, "finetune", {"model": cfg.model, "teacher": cfg.teacher, "tokenizer": cfg.tokenizer,
                                             "data_dir": cfg.data_dir, "ds_config": cfg.ds_config})
    if (out / "metrics.json").exists() and not cfg.overwrite:
        raise UserError(f"--out_dir {out}: already holds a finished run (metrics.json); choose another folder "
                        f"or pass --overwrite true")
    foreign = foreign_entries(out, marker, OWNED) if marker is not None and cfg.overwrite else []
    if foreign:
        raise UserError(f"--out_dir {out}: --overwrite replaces only what finetune wrote, but the folder also holds "
                        f"{', '.join(foreign[:5])}; move those away or choose another folder")
    return out


def encode_pairs(tokenizer, examples: list[dict], max_len: int) -> list[dict]:
    """Token ids of text_a (and text_b) truncated to max_len, longest side first, unpadded."""
    a = [e["text_a"] for e in examples]
    b = [e["text_b"] for e in examples] if examples and examples[0]["text_b"] is not None else None
    enc = tokenizer(a, b, truncation=True, max_length=max_len, padding=False) if b else \
        tokenizer(a, truncation=True, max_length=max_len, padding=False)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [dict({k: enc[k][i] for k in keys}, label=e["label"], idx=e["idx"]) for i, e in enumerate(examples)]


def collate(features: list[dict], pad_id: int, model_keys: set[str]):
    """Pad a list of features to the longest one: {key: (B, L) long tensor} plus scalar fields as (B,)."""
    import torch

    longest = max(len(f["input_ids"]) for f in features)
    batch = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        if key in features[0] and key in model_keys:
            batch[key] = torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features])
    for key in ("label", "start_positions", "end_positions"):
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features])
    return batch


def _model_input_keys(model) -> set[str]:
    """Inputs the model takes; token_type_ids only when it has more than one segment embedding
    (a DistilBERT has none and a RoBERTa has one, so BERT-style segment ids would break them)."""
    params = set(inspect.signature(model.forward).parameters)
    keys = {"input_ids", "attention_mask"} & params
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0) >= 2:
        keys.add("token_type_ids")
    return keys


def _gather(obj, dist):
    """all_gather_object over the job; a list of each rank's object (rank order)."""
    import torch.distributed as tdist

    if dist.world_size == 1:
        return [obj]
    out = [None] * dist.world_size
    tdist.all_gather_object(out, obj)
    return out


def _set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_optimizer(model, cfg: FinetuneConfig, total_steps: int):
    """AdamW (no decay on biases and LayerNorm weights) and a linear warmup / linear decay schedule with
    W = floor(warmup_ratio * total_steps) warmup steps."""
    import torch

    from dstrain.engine import adamw, linear_schedule  # lazy: imports torch

    optimizer = adamw(model, cfg.lr, cfg.weight_decay, betas=(0.9, 0.999), eps=1e-8)
    factor = linear_schedule(total_steps, cfg.warmup_ratio, warmup_rounding="floor")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------- evaluation


def _forward_eval(model, feats: list[dict], keys: set[str], pad_id: int, bs: int, device):
    """Logits for a list of features, in order: (N, C) classification or two lists of (L_i,) for spans."""
    import torch

    outs = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(feats), bs):
            batch = collate(feats[i:i + bs], pad_id, keys)
            out = model(**{k: v.to(device) for k, v in batch.items() if k in keys})
            if hasattr(out, "start_logits"):
                for j, f in enumerate(feats[i:i + bs]):
                    n = len(f["input_ids"])
                    outs.append((out.start_logits[j, :n].float().cpu().numpy(),
                                 out.end_logits[j, :n].float().cpu().numpy()))
            else:
                outs.extend(out.logits.float().cpu().numpy())
    model.train()
    return outs


def evaluate_classification(model, task, eval_feats: dict[str, list[dict]], keys, pad_id, bs, dist):
    """Each rank scores examples idx % world == rank; rank 0 gets {split: (metrics, [(idx, pred, label)])}."""
    results = {}
    for split, feats in eval_feats.items():
        mine = [f for n, f in enumerate(feats) if n % dist.world_size == dist.rank]
        logits = _forward_eval(model, mine, keys, pad_id, bs, dist.device) if mine else []
        preds = [float(l[0]) if task.kind == "regression" else int(l.argmax()) for l in logits]
        local = [(f["idx"], p, f["label"]) for f, p in zip(mine, preds)]
        gathered = sorted((r for part in _gather(local, dist) for r in part), key=lambda r: r[0])
        metrics = classification_metrics(task.metrics, [r[1] for r in gathered], [r[2] for r in gathered])
        results[split] = (metrics, gathered)
    return results


def evaluate_squad(model, cfg, examples, eval_feats, keys, pad_id, bs, dist):
    """Each rank decodes the examples index % world == rank (all of their windows, so n-best is complete);
    the predictions are gathered and scored with the official v1.1 logic."""
    mine_ex = [i for i in range(len(examples)) if i % dist.world_size == dist.rank]
    wanted = set(mine_ex)
    feats = [f for f in eval_feats if f["example_index"] in wanted]
    logits = _forward_eval(model, feats, keys, pad_id, bs, dist.device) if feats else []
    # Re-index the features' examples to the local example list so postprocess can group them.
    local_pos = {ei: n for n, ei in enumerate(mine_ex)}
    local_feats = [dict(f, example_index=local_pos[f["example_index"]]) for f in feats]
    preds, nbest = squad_lib.postprocess([examples[i] for i in mine_ex], local_feats, [l[0] for l in logits],
                                         [l[1] for l in logits], cfg.n_best_size, cfg.max_answer_length)
    all_preds, all_nbest = {}, {}
    for p, nb in _gather((preds, nbest), dist):
        all_preds.update(p)
        all_nbest.update(nb)
    return squad_lib.evaluate(examples, all_preds), all_preds, all_nbest


# --------------------------------------------------------------------------------------------- one run


def load_model(cfg: FinetuneConfig, task):
    """The --model with a fresh head for the task (a span head for SQuAD)."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if task.kind == "span":
        return load_pretrained(AutoModelForQuestionAnswering, cfg.model, "model")
    extra = {"problem_type": "regression"} if task.kind == "regression" else {
        "id2label": dict(enumerate(task.labels)), "label2id": {n: i for i, n in enumerate(task.labels)}}
    # ignore_mismatched_sizes: a model fine-tuned on another task keeps its body, gets a fresh head.
    return load_pretrained(AutoModelForSequenceClassification, cfg.model, "model", num_labels=task.num_labels,
                           ignore_mismatched_sizes=True, **extra)


def check_model(cfg: FinetuneConfig, model, tokenizer) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"--model {cfg.model}: the tokenizer has {len(tokenizer)} tokens but the model's vocabulary "
                        f"is {model.config.vocab_size}; pass the --tokenizer the model was trained with")
    # RoBERTa-style models offset positions by padding_idx + 1, so they hold two fewer positions.
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        positions -= 2
    if positions and cfg.seq_len() > positions:
        raise UserError(f"--max_seq_length {cfg.seq_len()}: the model {cfg.model} has only {positions} positions; "
                        f"pass --max_seq_length {positions} or less")


def load_teacher(cfg: FinetuneConfig, task, tokenizer, model):
    """The --teacher of a second distillation step, checked against the task and the student `model`."""
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    span = task.kind == "span"
    cls = AutoModelForQuestionAnswering if span else AutoModelForSequenceClassification
    teacher, info = load_pretrained(cls, cfg.teacher, "teacher", "a fine-tuned model", output_loading_info=True)
    check_teacher(cfg, task, info, teacher, tokenizer)
    if not span and teacher.config.num_labels != task.num_labels:
        raise UserError(f"--teacher {cfg.teacher}: has {teacher.config.num_labels} outputs but {task.name} "
                        f"needs {task.num_labels}; pass a teacher fine-tuned on {task.name}")
    t_names = [str(teacher.config.id2label.get(i, "")) for i in range(task.num_labels)] if not span else []
    if task.labels and set(t_names) == set(task.labels) and t_names != list(task.labels):
        raise UserError(f"--teacher {cfg.teacher}: its labels are in the order {t_names}, {task.name} uses "
                        f"{list(task.labels)}; its logits would be matched to the wrong classes")
    if teacher.config.vocab_size != model.config.vocab_size:
        raise UserError(f"--teacher {cfg.teacher}: vocabulary of {teacher.config.vocab_size} tokens, the student "
                        f"has {model.config.vocab_size}; teacher and student must share the tokenizer")
    return teacher


def _build_engine(cfg: FinetuneConfig, model, dist, ds_base: dict, batch: tuple[int, int, int], total_steps: int):
    """DeepSpeed engine around `model` with our AdamW and schedule: (engine, scheduler, precision, ds_cfg)."""
    import deepspeed  # lazy: slow to import

    from dstrain.engine import engine_ds_config  # lazy: imports torch

    micro, accum, global_bs = batch
    optimizer, scheduler = _make_optimizer(model, cfg, total_steps)
    ds_cfg, precision = resolve_ds_config(ds_base, micro_batch_size_per_gpu=micro, grad_accum_steps=accum,
                                          global_batch_size=global_bs, precision=cfg.precision,
                                          device_type=dist.device.type, gradient_clipping=cfg.gradient_clipping)
    engine_ds_config(ds_cfg, precision, skip_nonfinite_bf16=False)  # a non-finite loss stops finetune (below)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    return engine, scheduler, precision, ds_cfg


def _start_run_dir(cfg: FinetuneConfig, seed: int, run_dir: Path, dist, batch: tuple[int, int, int], precision: str,
                   ds_cfg: dict) -> None:
    """Rank 0, once every check has passed: output starts here (config.json; --overwrite removes our old files)."""
    if not dist.is_main:
        return
    micro, accum, global_bs = batch
    if cfg.overwrite and seed == cfg.seed:  # the earlier run's files, checked to be ours in _prepare_out_dir
        remove_owned(Path(cfg.out_dir), read_marker(Path(cfg.out_dir)), OWNED)
    run_dir.mkdir(parents=True, exist_ok=True)
    # an old metrics.json (--overwrite) would make this half-done rerun look finished
    for old in {run_dir / "metrics.json", Path(cfg.out_dir) / "metrics.json"}:
        old.unlink(missing_ok=True)
    atomic_write_json(run_dir / "config.json", dict(config_to_dict(cfg), seed=seed, world_size=dist.world_size,
                                                     micro_batch_size_per_gpu=micro, grad_accum_steps=accum,
                                                     global_batch_size=global_bs, precision=precision,
                                                     ds_config_resolved=ds_cfg))


def _evaluate(engine, cfg: FinetuneConfig, task, data: dict, keys: set[str], pad_id: int, dist):
    """({split: metrics}, what _write_outputs writes: SQuAD (predictions, nbest), else {split: (metrics, rows)})."""
    if task.kind == "span":
        metrics, preds, nbest = evaluate_squad(engine.module, cfg, data["eval_examples"]["validation"],
                                               data["eval_features"]["validation"], keys, pad_id,
                                               cfg.eval_batch_size_per_gpu, dist)
        return {"validation": metrics}, (preds, nbest)
    res = evaluate_classification(engine.module, task, data["eval_features"], keys, pad_id,
                                  cfg.eval_batch_size_per_gpu, dist)
    return {s: m for s, (m, _) in res.items()}, res


def _write_outputs(run_dir: Path, task, payload, engine, tokenizer, writer, metrics: dict) -> None:
    """Rank 0: predictions, the model (with the tokenizer), then metrics.json, last: it marks a finished run."""
    from dstrain.models import save_hf_model  # lazy: imports torch
    if task.kind == "span":
        preds, nbest = payload
        atomic_write_json(run_dir / "predictions.json", preds)
        atomic_write_json(run_dir / "nbest_predictions.json", nbest)
    else:
        lines = []
        for split, (_, rows) in payload.items():
            for idx, pred, label in rows:
                rec = {"split": split, "idx": idx, "label": label, "prediction": pred}
                if task.kind != "regression":
                    rec.update(label_name=task.labels[label], prediction_name=task.labels[pred])
                lines.append(json.dumps(rec))
        atomic_write_text(run_dir / "predictions.jsonl", "\n".join(lines) + "\n")
    save_hf_model(engine.module, run_dir / "model", tokenizer)
    writer.close()
    atomic_write_json(run_dir / "metrics.json", metrics)


def _run_one(cfg: FinetuneConfig, seed: int, run_dir: Path, dist, ds_base: dict, batch: tuple[int, int, int],
             tokenizer, data: dict, task, teacher) -> dict:
    """Train and evaluate one seed (an evaluation after every epoch); returns the metrics written to
    run_dir/metrics.json."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from dstrain.engine import log_scalars, tb_writer  # lazy: imports torch
    from dstrain.finetune.losses import finetune_loss

    _set_seed(seed)  # before loading: the fresh task head is initialised from this seed
    micro, accum, global_bs = batch
    model = load_model(cfg, task)
    keys = _model_input_keys(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    teacher_keys = None
    if teacher is not None:
        teacher.eval().requires_grad_(False).to(dist.device)
        teacher_keys = _model_input_keys(teacher)

    train_feats = data["train_features"]
    sampler = DistributedSampler(train_feats, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    loader = DataLoader(train_feats, batch_size=micro, sampler=sampler,
                        collate_fn=lambda fs: collate(fs, pad_id, keys | {"token_type_ids"}))
    steps_per_epoch = max(1, len(loader) // accum)
    total_steps = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    epochs = math.ceil(total_steps / steps_per_epoch)

    engine, scheduler, precision, ds_cfg = _build_engine(cfg, model, dist, ds_base, batch, total_steps)
    if teacher is not None and precision != "fp32":
        teacher.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    _start_run_dir(cfg, seed, run_dir, dist, batch, precision, ds_cfg)
    writer = tb_writer(run_dir / "tb", dist.is_main)
    log.info("%s seed %d: %d train features, %d optimizer steps (%d epochs of %d), global batch %d, %s",
             task.name, seed, len(train_feats), total_steps, epochs, steps_per_epoch, global_bs, precision)

    t0 = time.time()
    lr_used = scheduler.get_last_lr()[0]
    step, sums, n_micro, micro_total, last_eval = 0, {}, 0, 0, None
    engine.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)  # a new order every epoch (the reference code forgot this)
        for b in loader:
            b = {k: v.to(dist.device) for k, v in b.items()}
            out = engine(**{k: v for k, v in b.items() if k in keys})
            t_out = None
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(**{k: v for k, v in b.items() if k in teacher_keys})
            loss, terms = finetune_loss(out, t_out, b, task.kind, cfg.alpha_ce, cfg.alpha_task, cfg.temperature)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss {loss.item()} at step {step}; lower --lr or use fp32")
            engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            engine.step()  # steps the optimizer and schedule only at an accumulation boundary
            n_micro += 1
            micro_total += 1
            for k, v in dict(terms, loss=loss).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if micro_total % accum:
                continue
            step += 1
            lr = lr_used
            lr_used = scheduler.get_last_lr()[0]  # the schedule has moved on: this is the next step's lr
            if step % cfg.log_every == 0 or step == total_steps:
                means = {k: v / n_micro for k, v in sums.items()}  # mean over the micro-batches since the last log
                log_scalars(writer, {**{f"train/{k}": v for k, v in means.items()}, "train/lr": lr}, step)
                log.info("step %d/%d loss %.4f lr %.2e", step, total_steps, means["loss"], lr)
                sums, n_micro = {}, 0
            if step >= total_steps:
                break
        last_eval = _evaluate(engine, cfg, task, data, keys, pad_id, dist)
        log_scalars(writer, {f"eval/{split}/{k}": v for split, m in last_eval[0].items() for k, v in m.items()}, step)
        if writer:
            writer.flush()
        log.info("epoch %d step %d eval %s", epoch + 1, step, json.dumps(last_eval[0]))
        if step >= total_steps:
            break

    split_metrics, payload = last_eval
    main_split = task.eval_splits[0]
    metrics = {"task": task.name, "model": cfg.model, "teacher": cfg.teacher or None, "seed": seed,
               "num_parameters": sum(p.numel() for p in engine.module.parameters()),
               "train_steps": step, "train_seconds": round(time.time() - t0, 2), "world_size": dist.world_size,
               "precision": precision, "num_train_features": len(train_feats), "main_split": main_split,
               "splits": split_metrics, **split_metrics[main_split]}
    if task.name == "mnli":
        metrics["accuracy_mm"] = split_metrics["validation_mismatched"]["accuracy"]
    if dist.is_main:
        _write_outputs(run_dir, task, payload, engine, tokenizer, writer, metrics)
    if dist.world_size > 1:
        torch.distributed.barrier()
    if hasattr(engine, "destroy"):  # release DeepSpeed's hooks before the next seed builds a new engine
        engine.destroy()
    return metrics


def check_teacher(cfg: FinetuneConfig, task, info: dict, teacher, tokenizer) -> None:
    """A second-step teacher must be fine-tuned (no weight left to random init) and read the student's token ids."""
    from transformers import AutoTokenizer

    missing = sorted(info.get("missing_keys", ()))
    if missing:
        raise UserError(f"--teacher {cfg.teacher}: its checkpoint has no weights for {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''} (transformers would start them at random), so it was "
                        f"never fine-tuned on {task.name}. Fine-tune it first (python dstrain/cli.py finetune --model "
                        f"{cfg.teacher} --task {task.name} --out_dir T) and pass --teacher T/model")
    if Path(cfg.teacher).is_dir() and has_tokenizer(cfg.teacher):
        t_vocab, s_vocab = AutoTokenizer.from_pretrained(cfg.teacher).get_vocab(), tokenizer.get_vocab()
        if t_vocab != s_vocab:
            raise UserError(f"--teacher {cfg.teacher}: its tokenizer ({teacher.config.model_type}, {len(t_vocab)} "
                            f"tokens) is not the student's ({len(s_vocab)} tokens): it would read the student's token "
                            f"ids as other words. Pass a teacher fine-tuned from a model with the student's tokenizer")


def median_metrics(per_seed: list[dict]) -> dict:
    """Median over seeds of every numeric top-level metric and of every per-split metric."""
    out = {}
    for k, v in per_seed[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seed",):
            out[k] = statistics.median(m[k] for m in per_seed)
    out["splits"] = {s: {k: statistics.median(m["splits"][s][k] for m in per_seed) for k in ms}
                     for s, ms in per_seed[0]["splits"].items()}
    return out


# ---------------------------------------------------------------------------------------------- command


def subset(examples: list, n: int) -> list:
    """n evenly spaced examples (all when n is 0 or too large): files are often sorted by label or genre,
    so a prefix would hold one class only."""
    if not n or n >= len(examples):
        return examples
    return [examples[i * len(examples) // n] for i in range(n)]


def prepare_data(cfg: FinetuneConfig, task, tokenizer) -> dict:
    """Load, check and tokenize the train and eval splits (every rank does the same, deterministically)."""
    seq = cfg.seq_len()
    splits = ("train", *task.eval_splits)
    if task.kind == "span":
        raw = squad_lib.load_squad(cfg.data_dir, splits)
        train = subset(raw["train"], cfg.max_train_examples)
        dev = subset(raw["validation"], cfg.max_eval_examples)
        return {"train_features": squad_lib.train_features(tokenizer, train, seq, cfg.doc_stride),
                "eval_examples": {"validation": dev},
                "eval_features": {"validation": squad_lib.eval_features(tokenizer, dev, seq, cfg.doc_stride)}}
    raw = load_examples(task, cfg.data_dir, splits)
    train = subset(raw["train"], cfg.max_train_examples)
    evals = {s: subset(raw[s], cfg.max_eval_examples) for s in task.eval_splits}
    return {"train_features": encode_pairs(tokenizer, train, seq),
            "eval_features": {s: encode_pairs(tokenizer, ex, seq) for s, ex in evals.items()}}


def finetune(**kwargs):
    """Fine-tune a model folder on a task and evaluate it with the task's official metric."""
    cfg = build_config(FinetuneConfig, kwargs, command="finetune")
    task = get_task(cfg.task)
    _check_model_dir(cfg.model, "model")
    if cfg.teacher:
        _check_model_dir(cfg.teacher, "teacher")
    # issue #16: unsupported families fail here, not in a traceback
    check_family(cfg.model, "--model", causal=False)
    if cfg.teacher:
        check_family(cfg.teacher, "--teacher", causal=False)
    if cfg.tokenizer:
        _check_model_dir(cfg.tokenizer, "tokenizer", need_config=False)
    out = _prepare_out_dir(cfg)
    tokenizer = _load_tokenizer(cfg.tokenizer or cfg.model, "tokenizer" if cfg.tokenizer else "model")
    # every bad input surfaces before the process group and any output: models, teacher, data
    model = load_model(cfg, task)
    check_model(cfg, model, tokenizer)
    teacher = load_teacher(cfg, task, tokenizer, model) if cfg.teacher else None
    del model  # each seed loads its own, its head initialised from its seed
    data = prepare_data(cfg, task, tokenizer)
    dist = init_distributed()
    setup_logging(dist.rank)
    lock = lock_out_dir(out, "finetune", dist.rank, dist.world_size)  # noqa: F841  (held until finetune returns)
    ds_path = cfg.ds_config or str(ROOT / "ds_configs" / (
        "finetune_gpu.json" if dist.device.type == "cuda" else "finetune_cpu.json"))
    ds_base = load_ds_config(ds_path)
    zero = ds_base.get("zero_optimization", {}).get("stage", 0)
    if zero >= 3:
        raise ConfigError(f"--ds_config {ds_path}: ZeRO stage 3 is not supported by finetune (the model is saved "
                          f"and evaluated from whole parameters); use stage 0, 1 or 2")
    if "optimizer" in ds_base or "scheduler" in ds_base:
        raise ConfigError(f"--ds_config {ds_path}: finetune builds AdamW and the linear schedule from --lr, "
                          f"--weight_decay and --warmup_ratio; remove \"optimizer\"/\"scheduler\" from the file")
    batch = derive_batch(cfg.micro_batch_size_per_gpu, cfg.grad_accum_steps, cfg.global_batch_size, dist.world_size)

    seeds = [cfg.seed + i for i in range(cfg.num_seeds)]
    per_seed = []
    for seed in seeds:
        run_dir = out if cfg.num_seeds == 1 else out / f"seed-{seed}"
        per_seed.append(_run_one(cfg, seed, run_dir, dist, ds_base, batch, tokenizer, data, task, teacher))
    result = per_seed[0]
    if cfg.num_seeds > 1:
        result = {"task": task.name, "model": cfg.model, "teacher": cfg.teacher or None, "seeds": seeds,
                  "num_seeds": len(seeds), "main_split": task.eval_splits[0], "aggregate": "median",
                  **median_metrics(per_seed),
                  "per_seed": {str(m["seed"]): {k: m[k] for k in task.metrics} for m in per_seed},
                  "run_dirs": [f"seed-{s}" for s in seeds]}
        if dist.is_main:
            atomic_write_json(out / "config.json", dict(config_to_dict(cfg), seeds=seeds))
            atomic_write_json(out / "metrics.json", result)
    if dist.is_main:
        shown = {k: round(result[k], 4) for k in (*task.metrics, "accuracy_mm") if k in result}
        print(f"finetune {task.name}: {json.dumps(shown)} -> {out / 'metrics.json'}", flush=True)


finetune.config_class = FinetuneConfig
