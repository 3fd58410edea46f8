"""Model families dstrain distils: one small adapter per family, one trainer for all (docs/FAMILIES.md).

    from dstrain.families import family_of, check_model
    fam = family_of(teacher.config, "--teacher")      # UserError naming the supported families otherwise
    fam.causal, fam.lm_term, fam.auto_class()         # False, "mlm", AutoModelForMaskedLM for encoders

A family says
- which transformers class holds it (`AutoModelForMaskedLM` or `AutoModelForCausalLM`),
- where its stacked blocks live in the state dict (`layers_prefix`), so a student keeps the teacher's
  class with fewer blocks and copies the mapped ones (`build_same_class_student`),
- its encoder/decoder (returns the last hidden state) and LM head, so the trainer runs the vocabulary
  projection on selected rows only (`dstrain.models.mlm_parts`),
- whether batches are masked (MLM: the masked positions carry labels) or causal (every position is
  labelled with the next token: `dstrain.data.causal`); the loss is the same triple loss with the LM
  cross-entropy named `mlm` or `clm`.

BERT and RoBERTa-family students are built by dstrain.models (BERT -> DistilBERT); the others here.
ModernBERT's rules: student layer 0 copies teacher layer 0 and no other student layer does (block 0 is
the only one without an attention LayerNorm), and student layer i has the attention kind (global `full_attention` or local
`sliding_attention`) of the teacher layer it copies, layer_types[i] = teacher.layer_types[map[i]], so a
copied block computes what it computed in the teacher.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Callable

from dstrain.config import UserError

if TYPE_CHECKING:  # torch is imported only where a model is built: benchmark/data_prep import this module
    import torch
    from torch import nn


@dataclasses.dataclass(frozen=True)
class Family:
    """How dstrain reads and shrinks one transformers model family."""

    name: str  # label in messages and docs
    model_types: tuple[str, ...]  # config.model_type values of the family
    causal: bool  # next-token LM (no masking) instead of masked LM
    base_attr: str  # attribute of the *LM model holding the body that returns last_hidden_state
    layers_prefix: str  # state-dict prefix of block i is f"{layers_prefix}{i}."
    # LM model -> (transform, projector): logits = projector(transform(last_hidden_state)), projector an
    # nn.Linear (V, H) tied to the word embeddings; the fused loss takes transform's output and the projector's weights
    head: Callable[["nn.Module"], tuple[Callable[["torch.Tensor"], "torch.Tensor"], "nn.Linear"]]
    student_built_here: bool = True  # False: dstrain.models builds it (BERT -> DistilBERT, RoBERTa)

    @property
    def lm_term(self) -> str:
        """Name of the LM cross-entropy term in the loss and the logs."""
        return "clm" if self.causal else "mlm"

    def auto_class(self):
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        return AutoModelForCausalLM if self.causal else AutoModelForMaskedLM


def _bert_head(m: nn.Module):
    return m.cls.predictions.transform, m.cls.predictions.decoder


def _roberta_head(m: nn.Module):
    from torch.nn.functional import gelu

    head = m.lm_head
    return (lambda h: head.layer_norm(gelu(head.dense(h)))), head.decoder


def _distilbert_head(m: nn.Module):
    return (lambda h: m.vocab_layer_norm(m.activation(m.vocab_transform(h)))), m.vocab_projector


FAMILIES: tuple[Family, ...] = (
    Family("BERT", ("bert",), False, "bert", "bert.encoder.layer.", _bert_head, student_built_here=False),
    Family("RoBERTa / XLM-RoBERTa / CamemBERT", ("roberta", "xlm-roberta", "camembert"), False, "roberta",
           "roberta.encoder.layer.", _roberta_head, student_built_here=False),
    Family("DistilBERT", ("distilbert",), False, "distilbert", "distilbert.transformer.layer.", _distilbert_head),
    Family("ModernBERT", ("modernbert",), False, "model", "model.layers.", lambda m: (m.head, m.decoder)),
    # GPT-2's final LayerNorm is inside `transformer`: the head is the projection alone
    Family("GPT-2", ("gpt2",), True, "transformer", "transformer.h.", lambda m: ((lambda h: h), m.lm_head)),
)
BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}


def supported_text(causal: bool | None = None) -> str:
    fams = [f for f in FAMILIES if causal is None or f.causal == causal]
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in fams)


def family_of(config: Any, flag: str, source: str = "", causal: bool | None = None) -> Family:
    """The family of a transformers config, or UserError naming the supported ones.

    causal: None accepts any family; False only masked-LM (encoder) families, True only causal ones.
    """
    mt = getattr(config, "model_type", None)
    fam = BY_TYPE.get(mt)
    if fam is None or (causal is not None and fam.causal != causal):
        what = "masked-LM" if causal is False else "causal-LM" if causal else ""
        raise UserError(f"{flag} {source}: model type {mt!r} is not a supported {what + ' ' if what else ''}family; "
                        f"dstrain supports {supported_text(causal)}. Pass a model of one of these families")
    return fam


def check_model(name_or_path: str, flag: str, causal: bool | None = None) -> Family:
    """Read only the config of `name_or_path` and return its family (UserError if unsupported or unreadable).

    Run at a command's entry, before any weights load, so an unsupported model costs no traceback."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(str(name_or_path))
    except (OSError, ValueError, KeyError) as e:
        raise UserError(
            f"{flag} {name_or_path}: cannot load a masked-LM or causal-LM from it ({str(e).splitlines()[0]}). Pass a folder written by "
            f"save_pretrained (config.json + weights) or a model name already in the Hugging Face cache "
            f"(HF_HUB_OFFLINE is {os.environ.get('HF_HUB_OFFLINE', 'unset')}).") from None
    return family_of(cfg, flag, str(name_or_path), causal)


# ----------------------------------------------------------------------------------------- students
def student_config(fam: Family, tcfg: Any, layer_map: list[int]):
    """The teacher's config with len(layer_map) blocks; ModernBERT keeps each copied block's attention kind."""
    scfg = tcfg.__class__.from_dict(tcfg.to_dict())
    scfg.num_hidden_layers = len(layer_map)  # n_layers / n_layer through the configs' attribute_map
    if fam.name == "ModernBERT":
        scfg.layer_types = [tcfg.layer_types[i] for i in layer_map]
    return scfg


def map_layers(t: dict[str, torch.Tensor], prefix: str, layer_map: list[int]) -> dict[str, torch.Tensor]:
    """Teacher state -> student state: block `layer_map[i]` becomes block i, everything else is copied."""
    s = {}
    for k, v in t.items():
        if not k.startswith(prefix):
            s[k] = v
            continue
        idx, rest = k[len(prefix):].split(".", 1)
        for si, ti in enumerate(layer_map):  # a teacher block may be copied to several student blocks
            if ti == int(idx):
                s[f"{prefix}{si}.{rest}"] = v
    return s


def build_same_class_student(fam: Family, teacher: nn.Module | None, tcfg: Any, student_layers: int | None,
                             layer_map: str, init: str, seed: int) -> tuple[nn.Module, list[int] | None]:
    """Student of the teacher's class with `student_layers` (default half) blocks; (model, map or None)."""
    import torch

    from dstrain.models import _tied_keys, parse_layer_map  # lazy: torch, and dstrain.models imports this module

    n = student_layers or max(1, tcfg.num_hidden_layers // 2)
    if init not in ("teacher", "random"):
        raise UserError(f"--student_init {init!r}: use teacher (copy mapped layers) or random (ablation)")
    # the map also fixes ModernBERT's attention pattern, so a random student gets the same layout
    lmap = parse_layer_map(layer_map, tcfg.num_hidden_layers, n)
    if fam.name == "ModernBERT" and (lmap[0] != 0 or 0 in lmap[1:]):
        # block 0 has no attention pre-norm (the embedding norm precedes it); every other block has one
        raise UserError(f"--layer_map {layer_map!r} gives {lmap}: a ModernBERT student must copy teacher layer 0 "
                        f"into its layer 0 and nowhere else (only block 0 lacks the attention LayerNorm). "
                        f"Use even, reference, or a list starting with 0")
    torch.manual_seed(seed)
    student = fam.auto_class().from_config(student_config(fam, tcfg, lmap))
    if init == "random":
        return student, None
    t = {k: v.detach().float().cpu() for k, v in teacher.state_dict().items()}
    missing, unexpected = student.load_state_dict(map_layers(t, fam.layers_prefix, lmap), strict=False)
    missing = [k for k in missing if not k.endswith(("position_ids", "lm_head.weight")) and k not in _tied_keys(student)]
    if missing or unexpected:
        raise RuntimeError(f"student init from teacher: missing {missing}, unexpected {unexpected}")
    return student, lmap


def ffn_size(config: Any) -> int:
    """Feed-forward width for FLOP counts: GPT-2 names it n_inner (None = 4 x hidden)."""
    if getattr(config, "model_type", "") == "gpt2":
        return int(config.n_inner or 4 * config.n_embd)
    return int(config.intermediate_size)


def check_shards_match(tcfg: Any, shards: Any, cfg: Any) -> Family:
    """The teacher's family and the shards' layout agree: causal LMs train on blocks, masked LMs on sequences."""
    from dstrain.data.causal import is_causal  # lazy: dstrain.data imports torch

    fam = family_of(tcfg, "--teacher", getattr(cfg, "teacher", ""))
    blocks = is_causal(shards)
    if fam.causal and not blocks:
        raise UserError(f"--teacher {cfg.teacher} is a causal LM ({fam.name}) but --data {cfg.data} holds masked-LM "
                        f"sequences ([CLS] ... [SEP]); rebuild the shards with the teacher's tokenizer and "
                        f"data_prep/build_shards.py --packing blocks")
    if blocks and not fam.causal:
        raise UserError(f"--teacher {cfg.teacher} is a masked LM ({fam.name}) but --data {cfg.data} holds causal-LM "
                        f"blocks (--packing blocks); rebuild the shards with --packing sequences")
    if fam.causal and getattr(cfg, "restrict_ce_to_mask", False):
        raise UserError(f"--restrict_ce_to_mask true: nothing is masked for the causal LM --teacher {cfg.teacher}; "
                        f"the KL term uses every position. Drop the flag")
    lm = "alpha_clm" if fam.causal else "alpha_mlm"
    if all(float(getattr(cfg, a, 0.0)) == 0.0 for a in ("alpha_ce", lm, "alpha_cos")):
        raise UserError(f"--alpha_ce, --{lm} and --alpha_cos are all 0 for the {fam.name} --teacher {cfg.teacher} "
                        f"(--{'alpha_mlm' if fam.causal else 'alpha_clm'} does not apply to it); set one of them > 0")
    return fam
