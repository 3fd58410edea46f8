"""Fine-tuning losses as pure functions of tensors, with the optional second distillation step.

docs/METHOD.md: for SQuAD, L = a_ce * (KL_start + KL_end) / 2 * T^2 + a_task * CE (0.5 / 0.5, T = 2); for
classification the same with one KL over the label distribution; for regression (STS-B) the student
matches the teacher's score by squared error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dstrain.losses import kl_distill


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over rows. logits: (N, C) -> scalar.

    The distillation loss of pre-training, `dstrain.losses.kl_distill`, on the N rows of a batch (its C
    classes or span positions in place of the vocabulary).
    """
    return kl_distill(student_logits, teacher_logits, temperature)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for classification (logits (N, C), labels (N,) int); MSE for regression (logits (N, 1))."""
    if kind == "regression":
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels.long())


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """(CE(start) + CE(end)) / 2 over a batch; logits (N, L), positions (N,) token indices."""
    ce_start = F.cross_entropy(start_logits.float(), start_positions)
    ce_end = F.cross_entropy(end_logits.float(), end_positions)
    return (ce_start + ce_end) / 2


def classification_distill_loss(logits, labels, teacher_logits, kind: str, alpha_ce: float, alpha_task: float,
                                temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """a_ce * KL(teacher || student) * T^2 + a_task * CE (classification), or
    a_ce * MSE(student, teacher) + a_task * MSE(student, label) (regression). Returns (total, terms)."""
    l_task = task_loss(logits, labels, kind)
    if kind == "regression":
        l_ce = F.mse_loss(logits.float().view(-1), teacher_logits.float().view(-1))
    else:
        l_ce = soft_kl(logits, teacher_logits, temperature)
    return alpha_ce * l_ce + alpha_task * l_task, {"loss_ce": l_ce, "loss_task": l_task}


def span_distill_loss(start_logits, end_logits, start_positions, end_positions, t_start, t_end,
                      alpha_ce: float, alpha_task: float, temperature: float):
    """a_ce * (KL_start + KL_end) / 2 * T^2 + a_task * (CE_start + CE_end) / 2. Returns (total, terms)."""
    l_ce = (soft_kl(start_logits, t_start, temperature) + soft_kl(end_logits, t_end, temperature)) / 2
    l_task = span_loss(start_logits, end_logits, start_positions, end_positions)
    return alpha_ce * l_ce + alpha_task * l_task, {"loss_ce": l_ce, "loss_task": l_task}


def finetune_loss(out, t_out, batch: dict, kind: str, alpha_ce: float, alpha_task: float, temperature: float
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one micro-batch: (loss, {term: value}). `out`/`t_out`: the student's and the teacher's model
    outputs (t_out None: no teacher); `kind`: the task's (classification, regression or span). Without a teacher
    the task loss alone; with one, alpha_task * task loss + alpha_ce * the distillation term above."""
    if kind == "span":
        if t_out is None:
            loss = span_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"])
            return loss, {"loss_task": loss}
        return span_distill_loss(out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"],
                                 t_out.start_logits, t_out.end_logits, alpha_ce, alpha_task, temperature)
    if t_out is None:
        loss = task_loss(out.logits, batch["label"], kind)
        return loss, {"loss_task": loss}
    return classification_distill_loss(out.logits, batch["label"], t_out.logits, kind, alpha_ce, alpha_task,
                                       temperature)
