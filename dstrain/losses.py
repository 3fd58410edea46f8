"""DistilBERT's triple loss as pure functions of tensors.

    L = a_ce * L_ce + a_mlm * L_mlm + a_cos * L_cos            (Sanh et al. 2019; docs/METHOD.md)

Every function takes already-selected rows, so the caller decides which positions count (all non-pad
tokens, or only the masked ones) and the vocabulary-sized tensors are only ever built for those rows:
`select_positions` makes the (B, L) boolean selection, the trainer runs the MLM heads only on the
selected hidden states (see `dstrain.models.MaskedLMHeads`), and `kl_distill` takes one log-softmax per
model on those rows. Nothing here reads global state; `python -m pytest tests/train/test_losses.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def select_positions(attention_mask: torch.Tensor, labels: torch.Tensor | None, restrict_to_mask: bool) -> torch.Tensor:
    """Positions the distillation (KL and cosine) loss is computed on.

    attention_mask: (B, L) 1 for real tokens, 0 for padding. labels: (B, L) original id at masked
    positions, IGNORE_INDEX elsewhere. Returns a (B, L) bool tensor: every non-pad token, or with
    `restrict_to_mask` only the MLM-selected ones (the reference's `restrict_ce_to_mask`).
    """
    sel = attention_mask.bool()
    if restrict_to_mask:
        if labels is None:
            raise ValueError("restrict_to_mask needs labels")
        sel = sel & (labels != IGNORE_INDEX)
    return sel


def kl_distill(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-token KL(teacher || student) at temperature T, scaled by T^2 (Hinton et al. 2015).

    student_logits, teacher_logits: (N, V) at the N selected positions (any float dtype; computed in
    fp32). Returns a scalar:

        L_ce = T^2 / N * sum_n sum_v p_t[n,v] * (log p_t[n,v] - log p_s[n,v]),
        p_t = softmax(t / T), p_s = softmax(s / T).

    The T^2 keeps the gradient's magnitude independent of T. Each model's log-softmax is materialised
    once (no separate softmax): `kl_div(log_target=True)` takes both in log space. N == 0 gives 0.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} vs teacher {tuple(teacher_logits.shape)}")
    n = student_logits.shape[0]
    if n == 0:
        return student_logits.sum() * 0.0  # keeps the graph so backward still reaches every rank's hooks
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True) * (temperature**2) / n


def mlm_ce(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM cross-entropy of the student, no temperature.

    student_logits: (N, V) at the N masked positions; labels: (N,) the original token ids there.
    Returns mean_n -log softmax(s_n)[labels_n], or 0 when N == 0.
    """
    if labels.numel() == 0:
        return student_logits.sum() * 0.0
    return F.cross_entropy(student_logits.float(), labels, reduction="mean")


def cosine_hidden(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Align the directions of the last hidden states.

    student_hidden, teacher_hidden: (N, H) at the selected positions. Returns
    L_cos = mean_n (1 - cos(h_s[n], h_t[n])) (same as CosineEmbeddingLoss with target +1).
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"student hidden {tuple(student_hidden.shape)} vs teacher {tuple(teacher_hidden.shape)}; "
                         "the cosine loss needs the same hidden size (set --alpha_cos 0 otherwise)")
    if student_hidden.shape[0] == 0:
        return student_hidden.sum() * 0.0
    cos = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)
    return (1.0 - cos).mean()


def distill_total(terms: dict[str, torch.Tensor], alphas: dict[str, float]) -> torch.Tensor:
    """L = sum_k alphas[k] * terms[k] over the terms whose alpha is non-zero.

    terms: name -> scalar tensor (e.g. {"ce": L_ce, "mlm": L_mlm, "cos": L_cos}); alphas: name -> weight.
    """
    total = None
    for name, a in alphas.items():
        if a == 0.0:
            continue
        part = a * terms[name]
        total = part if total is None else total + part
    if total is None:
        raise ValueError("every loss weight is 0; set at least one of --alpha_ce, --alpha_mlm, --alpha_cos > 0")
    return total


def mlm_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(correct, total) of argmax predictions. logits: (N, V); labels: (N,)."""
    if labels.numel() == 0:
        return 0, 0
    return int((logits.argmax(-1) == labels).sum()), int(labels.numel())


# ------------------------------------------------------------------ causal LM (issue #16, GPT-2)
def clm_ce(student_logits: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of a causal-LM student (the DistilGPT2 recipe's alpha_clm term).

    student_logits: (N, V) at the N positions t that have a next token in their block; next_ids: (N,)
    the token at t + 1 there (dstrain.data.causal.next_token_labels). Returns
        L_clm = mean_n -log softmax(s_n)[next_n],   0 when N == 0,
    transformers' `labels=input_ids` loss of a causal LM. KL and cosine use every position, the last
    one included, so with a causal teacher the triple loss is
        L = a_ce * L_ce(all positions) + a_clm * L_clm + a_cos * L_cos(all positions).
    """
    return mlm_ce(student_logits, next_ids)  # the same arithmetic; only which rows and targets differ
