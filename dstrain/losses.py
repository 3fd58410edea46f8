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


# ----------------------------------------------------------------------- fused vocabulary loss
def vocab_chunk_rows(vocab_size: int, budget: int = 1 << 25) -> int:
    """Rows per chunk of the fused loss: about `budget` fp32 logits (128 MB) per (rows, V) temporary."""
    return max(1, budget // max(1, vocab_size))


class _FusedVocabLoss(torch.autograd.Function):
    """Head projection + KL + MLM cross-entropy, chunk by chunk, gradients computed in forward.

    See `fused_vocab_loss`. The gradients with respect to h_s, W and b are accumulated while the
    logits of a chunk are live, so no (R, V) tensor ever exists and backward only rescales them.
    """

    @staticmethod
    def forward(ctx, h_s, w_s, b_s, h_t, w_t, b_t, labels, temperature, alpha_ce, alpha_mlm, n_mlm, chunk_rows):
        R = h_s.shape[0]
        dev, cdt = h_s.device, h_s.dtype
        # L_mlm is computed for the log even at a_mlm = 0 (an ablation); it then adds no gradient
        kl_on, mlm_on, mlm_grad = h_t is not None and alpha_ce != 0.0, n_mlm > 0, alpha_mlm != 0.0
        # Half precision: the per-row gradients are ~1/R, below fp16's normal range at R ~ 1e5; they are
        # computed R times too large and divided back in backward (in fp32, with the loss scale).
        scale = 1.0 if cdt == torch.float32 else float(max(R, 1))
        grad_h = torch.empty_like(h_s) if R else h_s.new_zeros(h_s.shape)
        grad_w = torch.zeros(w_s.shape, dtype=torch.float32, device=dev)
        grad_b = torch.zeros(w_s.shape[0], dtype=torch.float32, device=dev) if b_s is not None else None
        kl_sum = torch.zeros((), dtype=torch.float32, device=dev)
        mlm_sum = torch.zeros((), dtype=torch.float32, device=dev)
        T = float(temperature)
        c_kl = alpha_ce * T / max(R, 1) * scale  # d(a_ce * T^2/R * KL_sum)/d s = a_ce * T/R * (p_s - p_t)
        c_mlm = alpha_mlm / max(n_mlm, 1) * scale
        for lo in range(0, R, chunk_rows):
            hi = min(R, lo + chunk_rows)
            hs = h_s[lo:hi]
            s = F.linear(hs, w_s, b_s).float()  # (c, V)
            g = None
            if kl_on:
                t = F.linear(h_t[lo:hi], w_t, b_t).float().div_(T)
                log_pt = t.sub_(t.logsumexp(-1, keepdim=True))  # in place: t is not needed again
                log_ps = s / T
                log_ps = log_ps.sub_(log_ps.logsumexp(-1, keepdim=True))
                pt = log_pt.exp()
                kl_sum += (pt * log_pt.sub_(log_ps)).sum()
                g = log_ps.exp_().sub_(pt).mul_(c_kl)  # (c, V) in the storage of log_ps
                del pt, log_pt
            if mlm_on:
                y = labels[lo:hi]
                valid = (y != IGNORE_INDEX)
                tgt = y.clamp(min=0).unsqueeze(1)
                lse = s.logsumexp(-1, keepdim=True)  # (c, 1)
                mlm_sum += ((lse.squeeze(1) - s.gather(1, tgt).squeeze(1)) * valid).sum()
            if mlm_on and mlm_grad:
                w_row = (valid.to(s.dtype) * c_mlm).unsqueeze(1)  # (c, 1)
                p = s.sub_(lse).exp_().mul_(w_row)  # softmax, in the storage of s
                p.scatter_add_(1, tgt, -w_row)
                g = p if g is None else g.add_(p)
            if g is None:
                grad_h[lo:hi].zero_()
                continue
            gd = g.to(cdt)
            grad_h[lo:hi] = gd @ w_s
            grad_w += (gd.t() @ hs).float()
            if grad_b is not None:
                grad_b += g.sum(0)
        kl = kl_sum * (T * T / max(R, 1))
        mlm = mlm_sum / max(n_mlm, 1)
        ctx.save_for_backward(grad_h, grad_w, grad_b if grad_b is not None else grad_w.new_zeros(0))
        ctx.has_bias, ctx.scale = b_s is not None, scale
        ctx.w_dtype = w_s.dtype
        ctx.b_dtype = b_s.dtype if b_s is not None else None
        ctx.mark_non_differentiable(kl, mlm)
        return alpha_ce * kl + alpha_mlm * mlm, kl, mlm

    @staticmethod
    def backward(ctx, grad_out, _gkl, _gmlm):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        k = grad_out.float() / ctx.scale
        gh = grad_h * k.to(grad_h.dtype) if ctx.scale == 1.0 else (grad_h.float() * k).to(grad_h.dtype)
        gw = (grad_w * k).to(ctx.w_dtype)
        gb = (grad_b * k).to(ctx.b_dtype) if ctx.has_bias else None
        return gh, gw, gb, None, None, None, None, None, None, None, None, None


def fused_vocab_loss(h_s: torch.Tensor, w_s: torch.Tensor, b_s: torch.Tensor | None, labels: torch.Tensor,
                     n_mlm: int, *, h_t: torch.Tensor | None = None, w_t: torch.Tensor | None = None,
                     b_t: torch.Tensor | None = None, temperature: float = 2.0, alpha_ce: float = 0.0,
                     alpha_mlm: float = 1.0, chunk_rows: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_ce * L_ce + a_mlm * L_mlm from the rows *before* the vocabulary projection, without (R, V) tensors.

    h_s: (R, H) the student's rows at the input of its projector (after the head's transform);
    w_s: (V, H), b_s: (V,) or None, the projector; logits s = h_s W_s^T + b_s. labels: (R,) the
    original id at MLM rows, IGNORE_INDEX elsewhere; n_mlm: their number (a host int, so no sync).
    h_t, w_t, b_t: the same for the teacher (frozen; None: no KL term). Returns (loss, L_ce, L_mlm):

        L_ce  = T^2 / R * sum_r KL(softmax(t_r / T) || softmax(s_r / T))        = kl_distill(s, t, T)
        L_mlm = 1 / n_mlm * sum_{r: labels_r != -100} -log softmax(s_r)[labels_r] = mlm_ce(s[m], labels[m])
        loss  = a_ce * L_ce + a_mlm * L_mlm

    Only `loss` is differentiable (L_ce and L_mlm are returned for logging); its gradients with
    respect to h_s, W_s and b_s are computed in forward, `chunk_rows` rows at a time (the approach of
    Liger-Kernel's fused linear losses): per chunk the fp32 logits of both models live once, and
    d loss / d s = a_ce * T / R * (softmax(s/T) - softmax(t/T)) + a_mlm / n_mlm * (softmax(s) - onehot).
    Under autocast the rows and weights are cast to the autocast dtype, as a linear layer would be.
    """
    if h_s.dim() != 2 or labels.shape != h_s.shape[:1]:
        raise ValueError(f"h_s must be (R, H) and labels (R,); got {tuple(h_s.shape)} and {tuple(labels.shape)}")
    if h_t is not None and h_t.shape[0] != h_s.shape[0]:
        raise ValueError(f"teacher rows {tuple(h_t.shape)} vs student rows {tuple(h_s.shape)}")
    dev = h_s.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        h_s, w_s = h_s.to(dt), w_s.to(dt)
        b_s = b_s.to(dt) if b_s is not None else None
        if h_t is not None:
            h_t, w_t = h_t.to(dt), w_t.to(dt)
            b_t = b_t.to(dt) if b_t is not None else None
    else:
        w_s = w_s.to(h_s.dtype)
        b_s = b_s.to(h_s.dtype) if b_s is not None else None
    if h_t is not None:
        w_t = w_t.to(h_t.dtype)
        b_t = b_t.to(h_t.dtype) if b_t is not None else None
    chunk = chunk_rows or vocab_chunk_rows(w_s.shape[0])
    with torch.autocast(dev, enabled=False):
        return _FusedVocabLoss.apply(h_s, w_s, b_s, h_t, w_t, b_t, labels, float(temperature), float(alpha_ce),
                                     float(alpha_mlm), int(n_mlm), int(chunk))
