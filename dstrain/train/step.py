"""One micro-step of distillation (or MLM pretraining): teacher forward -> student forward -> losses.

Shared by the trainer (`dstrain/train/run.py`) and the throughput measurement
(`dstrain/train/throughput.py`) so the benchmark times exactly what training runs.
"""

from __future__ import annotations

import dataclasses

import torch

from dstrain.losses import IGNORE_INDEX, clm_ce, cosine_hidden, distill_total, kl_distill, mlm_ce, select_positions
from dstrain.models import mlm_forward


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss of docs/METHOD.md: L = alpha_ce * KL_T + alpha_mlm * CE + alpha_cos * (1 - cos)."""

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


PRETRAIN_LOSS = LossSettings(alpha_ce=0.0, alpha_mlm=1.0, alpha_cos=0.0)


def compute_losses(engine, teacher, batch: dict[str, torch.Tensor], loss: LossSettings
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward both models on one micro-batch; returns (total, {term: value}) as scalar tensors.

    batch: input_ids, attention_mask, labels, each (B, L) on the right device. `engine` is the
    DeepSpeed engine around `StudentForDistill` (or that module itself); `teacher` a frozen module or
    None (pretraining). Vocabulary-sized tensors exist only for the selected rows: (N, V) with N the
    non-pad tokens (or the masked ones with restrict_ce_to_mask, or only the masked ones when
    pretraining).
    """
    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    mlm_rows = labels != IGNORE_INDEX  # (B, L)
    if loss.needs_teacher:
        sel = select_positions(am, labels, loss.restrict_ce_to_mask)  # (B, L)
        rows = sel | mlm_rows
    else:
        sel, rows = mlm_rows, mlm_rows
    with torch.no_grad():
        t_hidden, t_logits = mlm_forward(teacher, ids, am, rows) if loss.needs_teacher else (None, None)
    s_hidden, s_logits = engine(ids, am, rows)  # (N, H), (N, V)
    in_sel, in_mlm = sel[rows], mlm_rows[rows]  # (N,) which selected rows belong to each term
    # Skip the (N, V) copies when a term uses every selected row (the default: KL over all non-pad tokens)
    all_sel, all_mlm = bool(in_sel.all()), bool(in_mlm.all())
    terms: dict[str, torch.Tensor] = {}
    s_mlm = s_logits if all_mlm else s_logits[in_mlm]
    terms[loss.lm_term] = (clm_ce if loss.lm_term == "clm" else mlm_ce)(s_mlm, labels[mlm_rows])
    if loss.needs_teacher:
        s_sel = s_logits if all_sel else s_logits[in_sel]
        t_sel = t_logits if all_sel else t_logits[in_sel]
        terms["ce"] = kl_distill(s_sel, t_sel, loss.temperature) if loss.alpha_ce else s_sel.new_zeros(())
        h_s = s_hidden if all_sel else s_hidden[in_sel]
        h_t = t_hidden if all_sel else t_hidden[in_sel]
        terms["cos"] = cosine_hidden(h_s, h_t) if loss.alpha_cos else s_sel.new_zeros(())
    total = distill_total(terms, {k: v for k, v in loss.alphas.items() if k in terms})
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
