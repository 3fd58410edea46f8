"""One micro-step of distillation (or MLM pretraining): teacher forward -> student forward -> fused losses.

Shared by the trainer (`dstrain/train/run.py`) and the training-throughput benchmark
(`dstrain/train/throughput.py`, FLOPs from `dstrain/flops.py`) so the benchmark times exactly what training runs.

No host synchronisation happens between the batch's arrival and the end of backward
(tests/train/test_step_sync.py traces every op): the rows each term uses come from the collate
function as index tensors whose lengths the host already knows (`dstrain.data.loader.row_index`),
the vocabulary loss is the fused, chunked `dstrain.losses.fused_vocab_loss`, and a batch without
padding is run without an attention mask (a padded one with a prepared 4-D mask,
`dstrain.models.encoder_mask`), so transformers never tests the mask on the host.

Rows of a micro-batch of B sequences of length L (flat indices into B*L):
    tok_index  every non-pad token: the cosine term (always, as the reference code does) and, by
               default, the KL term;
    mlm_index  the masked tokens: the MLM term, and the KL term with restrict_ce_to_mask.
The student and the teacher project onto the vocabulary only the KL rows (or the MLM rows when there
is no KL term); the MLM targets ride along as labels with IGNORE_INDEX on the other rows.
"""

from __future__ import annotations

import dataclasses

import torch

from dstrain.data.loader import row_index
from dstrain.losses import IGNORE_INDEX, cosine_hidden, distill_total, kl_distill, mlm_ce, select_positions
from dstrain.models import DistillRows, encoder_mask, mlm_forward, mlm_parts


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss of docs/METHOD.md: L = alpha_ce * KL_T + alpha_mlm * CE + alpha_cos * (1 - cos).

    restrict_ce_to_mask restricts the KL term to the masked positions; the cosine term always uses
    every non-pad token, as the reference code does."""

    alpha_ce: float = 5.0
    alpha_mlm: float = 2.0
    alpha_cos: float = 1.0
    temperature: float = 2.0
    restrict_ce_to_mask: bool = False
    lm_term: str = "mlm"  # issue #16: "clm" for causal teachers (labels = next token, alpha_mlm holds alpha_clm)

    @property
    def alphas(self) -> dict[str, float]:
        return {"ce": self.alpha_ce, self.lm_term: self.alpha_mlm, "cos": self.alpha_cos}

    @property
    def needs_teacher(self) -> bool:
        return self.alpha_ce != 0.0 or self.alpha_cos != 0.0

    @property
    def kl_on_every_token(self) -> bool:
        """The vocabulary is projected at every non-pad token (else at the masked ones only)."""
        return self.alpha_ce != 0.0 and not self.restrict_ce_to_mask


PRETRAIN_LOSS = LossSettings(alpha_ce=0.0, alpha_mlm=1.0, alpha_cos=0.0)


def _rows(batch: dict) -> dict:
    """The batch's row indices; computed here (host-side) when a caller built the batch by hand on CPU."""
    if "tok_index" in batch:
        return batch
    if batch["input_ids"].device.type != "cpu":
        raise ValueError("the batch has no tok_index/mlm_index: build it with dstrain.data.loader.row_index "
                         "before moving it to the device")
    return {**batch, **row_index(batch["attention_mask"], batch["labels"])}


def compute_losses(engine, teacher, batch: dict, loss: LossSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward both models on one micro-batch; returns (total, {term: value}) as scalar tensors.

    batch: input_ids, attention_mask, labels (B, L), and from the collate function tok_index (N,),
    mlm_index (M,), mlm_labels (M,) and padded (bool); see the module docstring. `engine` is the
    DeepSpeed engine around `StudentForDistill` (or that module itself); `teacher` a frozen masked-LM
    or None (pretraining).
    """
    batch = _rows(batch)
    ids, tok, mlm_idx = batch["input_ids"], batch["tok_index"], batch["mlm_index"]
    am = batch["attention_mask"] if batch["padded"] else None
    if loss.kl_on_every_token and teacher is not None:
        proj, proj_labels = tok, batch["labels"].flatten().index_select(0, tok)
    else:
        proj, proj_labels = mlm_idx, batch["mlm_labels"]
    rows = DistillRows(proj, proj_labels, int(mlm_idx.shape[0]))  # shapes are host-known: no sync
    if teacher is not None and loss.needs_teacher:
        parts = mlm_parts(teacher)
        if parts is None:
            raise ValueError(f"teacher model type {teacher.config.model_type!r}: no known MLM head layout")
        with torch.no_grad():
            th = parts.base(input_ids=ids, attention_mask=encoder_mask(teacher, am)).last_hidden_state.flatten(0, 1)
            if loss.alpha_cos:
                rows.cos_index, rows.t_cos = tok, th.index_select(0, tok)
            if loss.alpha_ce:
                h = rows.t_cos if (proj is tok and rows.t_cos is not None) else th.index_select(0, proj)
                rows.t_head = parts.transform(h)
                rows.t_weight, rows.t_bias = parts.projector.weight, parts.projector.bias
    total, terms = engine(ids, am, None, distill=rows, loss=loss)
    if loss.lm_term != "mlm":  # a causal LM: the same cross-entropy at next-token targets, logged as "clm"
        terms = {(loss.lm_term if k == "mlm" else k): v for k, v in terms.items()}
    return total, terms


def micro_step(engine, teacher, batch, loss: LossSettings, nan_injection: bool = False
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """compute_losses + backward + engine.step (DeepSpeed divides by the accumulation steps and only
    updates at the accumulation boundary). Returns detached (total, terms)."""
    total, terms = compute_losses(engine, teacher, batch, loss)
    if nan_injection:  # fault injection for tests (DSTRAIN_FAULT_NAN_FROM_STEP)
        total = total * float("nan")
    engine.backward(total)
    engine.step()
    return total.detach(), {k: v.detach() for k, v in terms.items()}


def compile_encoders(*models: torch.nn.Module | None, fullgraph: bool = False, backend: str = "inductor") -> None:
    """torch.compile each model's encoder in place (`nn.Module.compile`: parameter names, state dicts
    and checkpoints are unchanged). The heads and the fused loss stay eager: they are matmuls and a
    chunk loop. Shapes vary with the batch's padded length, so dynamo marks them dynamic after the
    first recompile."""
    for m in models:
        if m is None:
            continue
        parts = mlm_parts(m)
        (parts.base if parts is not None else m).compile(fullgraph=fullgraph, backend=backend)


def resolve_compile(setting: str, device_type: str, zero_stage: int) -> bool:
    """--compile auto|true|false -> whether to compile. auto: on CUDA with ZeRO stage < 3 (ZeRO-3's
    parameter hooks break graphs), off on CPU (measured slower there for short runs: compile time)."""
    if setting == "true":
        return True
    if setting == "false":
        return False
    return device_type == "cuda" and zero_stage < 3


def reference_losses(model, teacher, batch: dict, loss: LossSettings) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The step as the pure functions of dstrain/losses.py compute it: (N, V) logits of both models,
    boolean row selections, the unfused KL / cross-entropy / cosine. The fused step must equal it
    (tests/train/test_losses.py); perf/bench_step.py times both. `model`: a StudentForDistill.
    Has host syncs (boolean indexing), so it is a reference, never the training path."""
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    mlm_rows = labels != IGNORE_INDEX
    tok_rows = am.bool()
    sel = select_positions(am, labels, loss.restrict_ce_to_mask) if teacher is not None else mlm_rows
    rows = sel | mlm_rows | (tok_rows if teacher is not None else mlm_rows)
    s_hidden, s_logits = model(ids, am, rows)
    terms = {"mlm": mlm_ce(s_logits[mlm_rows[rows]], labels[mlm_rows])}
    if teacher is not None and loss.needs_teacher:
        with torch.no_grad():
            t_hidden, t_logits = mlm_forward(teacher, ids, am, rows)
        in_sel, in_tok = sel[rows], tok_rows[rows]
        terms["ce"] = kl_distill(s_logits[in_sel], t_logits[in_sel], loss.temperature) if loss.alpha_ce \
            else s_logits.new_zeros(())
        terms["cos"] = cosine_hidden(s_hidden[in_tok], t_hidden[in_tok]) if loss.alpha_cos else s_logits.new_zeros(())
    total = distill_total(terms, {k: v for k, v in loss.alphas.items() if k in terms})
    return total, terms


def uncompile_encoders(*models: torch.nn.Module | None) -> None:
    """Undo compile_encoders (benchmarks time eager and compiled on the same modules)."""
    for m in models:
        if m is None:
            continue
        parts = mlm_parts(m)
        (parts.base if parts is not None else m)._compiled_call_impl = None  # what nn.Module.compile sets
