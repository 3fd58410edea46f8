"""Teacher loading, student construction and initialisation, and MLM heads run on selected rows only.
The `init_student` command (a student written without training) is dstrain/init_student.py.

Student layout (docs/METHOD.md): same hidden size and heads as the teacher, half the layers, no token-type
embeddings, no pooler.
- BERT teacher -> Hugging Face `DistilBertForMaskedLM` (the layout of `distilbert-base-uncased`).
- RoBERTa-family teacher (roberta, xlm-roberta, camembert) -> the same class with half the layers.
Initialisation from the teacher (default; `--student_init random` is the paper's ablation):
embeddings, the MLM head (transform and its LayerNorm unless --copy_vocab_transform false, decoder tied
to the word embeddings, bias) and one teacher layer per student layer by a layer map:
- `even` (default): teacher layers 0, 2, 4, ... (the author reports even layers worked better);
- `reference`: evenly spread over the depth, first and last included; for 12 -> 6 this is
  [0, 2, 4, 7, 9, 11], the map of the reference `extract_distilbert.py`;
- or an explicit list such as `0,3,6,9,10,11`.
A BERT teacher adds token-type embedding 0 to every token; DistilBERT has no token types, so that row
is folded into the position embeddings (the reference dropped it). The student therefore computes
exactly what the teacher's mapped layers compute: a student with every layer mapped reproduces the
teacher's logits (tests/train/test_models.py checks this).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dstrain.config import UserError
from dstrain.hf_io import has_tokenizer, load_pretrained

log = logging.getLogger("dstrain")

ROBERTA_TYPES = ("roberta", "xlm-roberta", "camembert")
# the MLM head's transform and its LayerNorm (DistilBERT and RoBERTa names): copied only with copy_vocab_transform
VOCAB_TRANSFORM_KEYS = ("vocab_transform.", "vocab_layer_norm.", "lm_head.dense.", "lm_head.layer_norm.")


# ----------------------------------------------------------------------------------------- teacher
def load_teacher(name_or_path: str, dtype: torch.dtype = torch.float32, device: Any = "cpu") -> nn.Module:
    """`AutoModelForMaskedLM` frozen for distillation: eval mode (no dropout), no grad, `dtype`, on `device`.

    The teacher is never given to DeepSpeed: it stays a plain module, replicated on every rank, so no
    ZeRO stage partitions, hooks or gives optimizer state to it.
    """
    from dstrain.families import check_model

    fam = check_model(name_or_path, "--teacher")  # a supported family, or a UserError naming them
    teacher = load_pretrained(fam.auto_class(), name_or_path, "teacher", "a causal LM" if fam.causal else "a masked-LM",
                              dtype=dtype)
    teacher.to(device)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


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


def teacher_fingerprint(teacher: nn.Module) -> str:
    """Hash of the teacher's config and a sample of its weights: resuming with another teacher is refused."""
    # where the teacher lies is not what it is: a teacher staged to node-local disk after a requeue is the same
    cfg = {k: v for k, v in teacher.config.to_dict().items() if k not in ("_name_or_path", "name_or_path")}
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode())
    emb = teacher.get_input_embeddings().weight
    h.update(emb.detach().float()[:8].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------- student
def parse_layer_map(layer_map: str, teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer index for each student layer. See the module docstring for the named maps."""
    if layer_map == "even":
        out = [2 * i for i in range(student_layers)]
    elif layer_map == "reference":
        if student_layers == 1:
            out = [teacher_layers - 1]
        else:
            # round(linspace(0, L-1, n)) with round-half-up: 12 -> 6 gives [0, 2, 4, 7, 9, 11]
            out = [int((i * (teacher_layers - 1)) / (student_layers - 1) + 0.5) for i in range(student_layers)]
    else:
        try:
            out = [int(x) for x in str(layer_map).replace(" ", "").split(",") if x != ""]
        except ValueError:
            raise UserError(f"--layer_map {layer_map!r}: use even, reference or a comma list of teacher layers") from None
        if len(out) != student_layers:
            raise UserError(f"--layer_map {layer_map!r} names {len(out)} layers but the student has {student_layers} "
                            f"(--student_layers); give one teacher layer per student layer")
    bad = [i for i in out if not 0 <= i < teacher_layers]
    if bad:
        raise UserError(f"--layer_map {layer_map!r}: teacher layer(s) {bad} do not exist; the teacher has "
                        f"{teacher_layers} layers (0..{teacher_layers - 1}). Use fewer --student_layers or another map")
    return out


def student_config_from_teacher(tcfg: Any, student_layers: int | None = None, dropout: float | None = None):
    """Config of the student: DistilBERT for BERT teachers, same class with fewer layers for RoBERTa.

    dropout: hidden and attention dropout of the student; None copies the teacher's (the reference's
    student config says 0.1 for both, whatever the teacher)."""
    from transformers import DistilBertConfig

    n = student_layers or max(1, tcfg.num_hidden_layers // 2)
    if tcfg.model_type == "bert":
        act = tcfg.hidden_act if isinstance(tcfg.hidden_act, str) else "gelu"
        return DistilBertConfig(
            vocab_size=tcfg.vocab_size, max_position_embeddings=tcfg.max_position_embeddings,
            sinusoidal_pos_embds=False, n_layers=n, n_heads=tcfg.num_attention_heads, dim=tcfg.hidden_size,
            hidden_dim=tcfg.intermediate_size,
            dropout=tcfg.hidden_dropout_prob if dropout is None else dropout,
            attention_dropout=tcfg.attention_probs_dropout_prob if dropout is None else dropout, activation=act,
            initializer_range=tcfg.initializer_range, pad_token_id=tcfg.pad_token_id,
            tie_word_embeddings=True)
    if tcfg.model_type in ROBERTA_TYPES:
        scfg = tcfg.__class__.from_dict(tcfg.to_dict())
        scfg.num_hidden_layers = n
        if dropout is not None:
            scfg.hidden_dropout_prob = scfg.attention_probs_dropout_prob = dropout
        return scfg
    raise UserError(f"--teacher: model type {tcfg.model_type!r} is not supported; dstrain distils BERT teachers "
                    f"into DistilBERT and RoBERTa-family teachers ({', '.join(ROBERTA_TYPES)}) into shallower RoBERTas")


def _bert_to_distilbert_state(t: dict[str, torch.Tensor], layer_map: list[int],
                              copy_vocab_transform: bool = True) -> dict[str, torch.Tensor]:
    """DistilBERT state dict from a BERT one. Without `copy_vocab_transform` the MLM head's transform and
    its LayerNorm are left out (they keep their random init), as in the reference `extract_distilbert.py`
    without `--vocab_transform`; the decoder and its bias are always copied."""
    s = {
        "distilbert.embeddings.word_embeddings.weight": t["bert.embeddings.word_embeddings.weight"],
        # every BERT token gets token-type 0 added; DistilBERT has no token types, so fold that row in
        "distilbert.embeddings.position_embeddings.weight":
            t["bert.embeddings.position_embeddings.weight"] + t["bert.embeddings.token_type_embeddings.weight"][0],
        "distilbert.embeddings.LayerNorm.weight": t["bert.embeddings.LayerNorm.weight"],
        "distilbert.embeddings.LayerNorm.bias": t["bert.embeddings.LayerNorm.bias"],
        "vocab_transform.weight": t["cls.predictions.transform.dense.weight"],
        "vocab_transform.bias": t["cls.predictions.transform.dense.bias"],
        "vocab_layer_norm.weight": t["cls.predictions.transform.LayerNorm.weight"],
        "vocab_layer_norm.bias": t["cls.predictions.transform.LayerNorm.bias"],
        "vocab_projector.weight": t["cls.predictions.decoder.weight"],
        "vocab_projector.bias": t.get("cls.predictions.bias", t.get("cls.predictions.decoder.bias")),
    }
    if not copy_vocab_transform:
        s = {k: v for k, v in s.items() if not k.startswith(VOCAB_TRANSFORM_KEYS)}
    names = {"attention.q_lin": "attention.self.query", "attention.k_lin": "attention.self.key",
             "attention.v_lin": "attention.self.value", "attention.out_lin": "attention.output.dense",
             "sa_layer_norm": "attention.output.LayerNorm", "ffn.lin1": "intermediate.dense",
             "ffn.lin2": "output.dense", "output_layer_norm": "output.LayerNorm"}
    for si, ti in enumerate(layer_map):
        for sname, tname in names.items():
            for p in ("weight", "bias"):
                s[f"distilbert.transformer.layer.{si}.{sname}.{p}"] = t[f"bert.encoder.layer.{ti}.{tname}.{p}"]
    return s


def _same_class_state(t: dict[str, torch.Tensor], layer_map: list[int],
                      copy_vocab_transform: bool = True) -> dict[str, torch.Tensor]:
    s = {}
    for k, v in t.items():
        if not copy_vocab_transform and k.startswith(VOCAB_TRANSFORM_KEYS):
            continue
        parts = k.split(".")
        if "layer" in parts and "encoder" in parts:
            i = parts.index("layer") + 1
            ti = int(parts[i])
            for si, mapped in enumerate(layer_map):
                if mapped == ti:
                    s[".".join(parts[:i] + [str(si)] + parts[i + 1:])] = v
        else:
            s[k] = v
    return s


def build_student(teacher: nn.Module | None, teacher_config: Any, student_layers: int | None, layer_map: str,
                  init: str, seed: int, copy_vocab_transform: bool = True,
                  dropout: float | None = None) -> tuple[nn.Module, list[int] | None]:
    """Student model (fp32, train mode) and the layer map used (None for random init).

    copy_vocab_transform: copy the MLM head's transform + LayerNorm from the teacher (else random init, the
    reference's default); dropout: the student's, None = the teacher's."""
    from transformers import AutoModelForMaskedLM

    from dstrain.families import build_same_class_student, family_of

    fam = family_of(teacher_config, "--teacher")  # DistilBERT, ModernBERT, GPT-2 teachers: dstrain/families.py
    if fam.student_built_here:
        return build_same_class_student(fam, teacher, teacher_config, student_layers, layer_map, init, seed)
    scfg = student_config_from_teacher(teacher_config, student_layers, dropout)
    n = scfg.n_layers if scfg.model_type == "distilbert" else scfg.num_hidden_layers
    torch.manual_seed(seed)  # random parts (and the random-init ablation) depend on --seed only
    student = AutoModelForMaskedLM.from_config(scfg)
    if init == "random":
        return student, None
    if init != "teacher":
        raise UserError(f"--student_init {init!r}: use teacher (copy mapped layers) or random (ablation)")
    lmap = parse_layer_map(layer_map, teacher_config.num_hidden_layers, n)
    t = {k: v.detach().float().cpu() for k, v in teacher.state_dict().items()}
    to_state = _bert_to_distilbert_state if teacher_config.model_type == "bert" else _same_class_state
    s = to_state(t, lmap, copy_vocab_transform)
    missing, unexpected = student.load_state_dict(s, strict=False)
    # position_ids-like buffers and the tied decoder weight may be absent from the mapped dict
    missing = [k for k in missing if not k.endswith("position_ids") and k not in _tied_keys(student)
               and (copy_vocab_transform or not k.startswith(VOCAB_TRANSFORM_KEYS))]
    if missing or unexpected:
        raise RuntimeError(f"student init from teacher: missing {missing}, unexpected {unexpected}")
    return student, lmap


def _tied_keys(model: nn.Module) -> set[str]:
    out = model.get_output_embeddings()
    keys = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if out is not None and p is out.weight:
            keys.add(name)
    return keys | {"vocab_projector.weight", "lm_head.decoder.weight", "cls.predictions.decoder.weight"}


def build_bert(vocab_size: int, pad_token_id: int, num_layers: int, hidden_size: int, num_heads: int,
               intermediate_size: int, max_position_embeddings: int, seed: int, dropout: float = 0.1) -> nn.Module:
    """A randomly initialised BertForMaskedLM (the `pretrain` model) sized by the arguments."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
                     num_attention_heads=num_heads, intermediate_size=intermediate_size,
                     max_position_embeddings=max_position_embeddings, pad_token_id=pad_token_id, type_vocab_size=2,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForMaskedLM(cfg)


# ------------------------------------------------------------------- heads on selected rows only
@dataclasses.dataclass(frozen=True)
class MLMParts:
    """A masked-LM cut where the distillation step needs it: encoder, head transform, vocabulary projector.

    logits = projector(transform(base(ids).last_hidden_state)); `projector` is an nn.Linear (V, H)
    whose weight is tied to the word embeddings. The fused loss takes transform's output and the
    projector's weight and bias, so the (N, V) logits are never built.
    """

    base: nn.Module
    transform: Callable[[torch.Tensor], torch.Tensor]
    projector: nn.Linear


def mlm_parts(model: nn.Module) -> MLMParts | None:
    """MLMParts of a supported masked-LM or causal-LM (dstrain/families.py), or None for another architecture."""
    from dstrain.families import BY_TYPE

    fam = BY_TYPE.get(getattr(model.config, "model_type", None))
    if fam is None:
        return None
    transform, projector = fam.head(model)
    return MLMParts(getattr(model, fam.base_attr), transform, projector)


def encoder_mask(model: nn.Module, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The attention mask to hand the encoder, built without a host sync.

    attention_mask: (B, L) 1 = token, 0 = padding, or None when the batch has no padding (the collate
    function knows): then no mask is passed, so SDPA may take its flash kernel. Otherwise a prepared
    (B, 1, 1, L) mask, which transformers' `create_bidirectional_mask` returns as-is: given the 2-D
    mask it would test `padding_mask.all()` on the host in every forward. SDPA takes a boolean mask
    (True = attend); eager attention adds a float mask (0 or the dtype's minimum).
    """
    if attention_mask is None:
        return None
    m = attention_mask[:, None, None, :].bool()
    if getattr(model.config, "_attn_implementation", "eager") == "sdpa":
        return m
    dt = model.get_input_embeddings().weight.dtype
    return torch.zeros(m.shape, dtype=dt, device=m.device).masked_fill_(~m, torch.finfo(dt).min)


def mlm_forward(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Last hidden states and MLM logits at the selected rows only (evaluation; training uses the fused loss).

    input_ids, attention_mask: (B, L); rows: (B, L) bool, or (N,) long flat indices into B*L.
    Returns hidden (N, H) and logits (N, V). The vocabulary projection, the largest tensor of the
    step, is applied to the N rows only instead of all B*L positions.
    """
    parts = mlm_parts(model)
    if parts is None:  # unknown architecture: full forward, then select
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        h, logits = out.hidden_states[-1], out.logits
        if rows.dtype == torch.bool:
            return h[rows], logits[rows]
        return h.flatten(0, 1).index_select(0, rows), logits.flatten(0, 1).index_select(0, rows)
    hidden = parts.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
    h = hidden[rows] if rows.dtype == torch.bool else hidden.flatten(0, 1).index_select(0, rows)  # (N, H)
    return h, parts.projector(parts.transform(h))


@dataclasses.dataclass
class DistillRows:
    """What the student's forward needs besides its input ids to compute the loss (see dstrain/train/step.py).

    proj_index: (R,) flat indices into B*L of the rows projected onto the vocabulary (KL and MLM);
    proj_labels: (R,) the MLM target there or IGNORE_INDEX; n_mlm: how many are targets (host int);
    cos_index: (N,) flat indices of the cosine rows (every non-pad token) or None; t_cos: (N, H)
    the teacher's last hidden states there; t_head: (R, H) the teacher's rows at its projector's
    input, with t_weight (V, H) and t_bias (V,) (None without a KL term).
    """

    proj_index: torch.Tensor
    proj_labels: torch.Tensor
    n_mlm: int
    cos_index: torch.Tensor | None = None
    t_cos: torch.Tensor | None = None
    t_head: torch.Tensor | None = None
    t_weight: torch.Tensor | None = None
    t_bias: torch.Tensor | None = None


class StudentForDistill(nn.Module):
    """What DeepSpeed wraps: the student plus the row selection and the fused loss, so ZeRO-3's hooks see
    every use of the student's weights (its projector, tied to the word embeddings, is used here
    outside the projector's own forward, hence registered as an external parameter)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        parts = mlm_parts(model)
        if parts is not None:
            try:
                from deepspeed.runtime.zero.partition_parameters import register_external_parameter
            except ImportError:  # pragma: no cover - DeepSpeed is a requirement; plain use needs no hooks
                register_external_parameter = None
            if register_external_parameter is not None:
                for p in (parts.projector.weight, parts.projector.bias):
                    if p is not None:
                        register_external_parameter(self, p)

    def forward(self, input_ids, attention_mask, rows=None, distill: DistillRows | None = None, loss=None):
        """(ids, mask, rows) -> (hidden, logits) at rows (evaluation). With `distill` and `loss` (a
        LossSettings) -> (total, {"ce", "mlm", "cos"}) of one micro-batch by the fused vocabulary loss;
        attention_mask is then (B, L) or None for a batch without padding."""
        if distill is None:
            return mlm_forward(self.model, input_ids, attention_mask, rows)
        from dstrain.losses import cosine_hidden, fused_vocab_loss

        parts = mlm_parts(self.model)
        mask = encoder_mask(self.model, attention_mask)  # attention_mask None: a batch without padding
        hidden = parts.base(input_ids=input_ids, attention_mask=mask).last_hidden_state.flatten(0, 1)  # (B*L, H)
        d = distill
        h_head = parts.transform(hidden.index_select(0, d.proj_index))  # (R, H)
        vocab, kl, mlm = fused_vocab_loss(
            h_head, parts.projector.weight, parts.projector.bias, d.proj_labels, d.n_mlm, h_t=d.t_head,
            w_t=d.t_weight, b_t=d.t_bias, temperature=loss.temperature, alpha_ce=loss.alpha_ce if d.t_head is not None else 0.0,
            alpha_mlm=loss.alpha_mlm)
        terms = {"mlm": mlm}
        total = vocab
        if d.t_head is not None or d.t_cos is not None:
            terms["ce"] = kl
            if d.t_cos is not None:
                terms["cos"] = cosine_hidden(hidden.index_select(0, d.cos_index), d.t_cos)
                total = total + loss.alpha_cos * terms["cos"]
            else:
                terms["cos"] = kl.new_zeros(())
        return total, terms


# ----------------------------------------------------------------------------------------- saving
def save_hf_model(model: nn.Module, out_dir: str | os.PathLike, tokenizer: str | os.PathLike | Any | None,
                  state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """save_pretrained (safetensors) + tokenizer into `out_dir`, written to a temp folder then renamed, so a
    crash never leaves a half-written model. `tokenizer`: a tokenizer folder, or a loaded tokenizer."""
    import shutil

    out = Path(out_dir)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(tmp)
    elif tokenizer is not None:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(tokenizer)).save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
