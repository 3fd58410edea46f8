"""Named recipes: the defaults of every setting where dstrain and the reference DistilBERT code differ.

    python dstrain/cli.py distill ... --recipe reference                    # the reference's choice for each
    python dstrain/cli.py distill ... --recipe reference --layer_map even   # an explicit flag still wins
    python dstrain/cli.py init_student ... --recipe reference               # the student as extract_distilbert.py makes it

The reference is the `distillation/` research project of Hugging Face transformers (train.py, distiller.py,
scripts/extract_distilbert.py, training_configs/distilbert-base-uncased.json). A recipe only fills the
settings left unset: precedence is defaults < recipe < `--config FILE.json` < command-line flags, where
"defaults" are the recipe's. docs/FIDELITY.md lists every difference with the reason and the measured effect.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from dstrain.config import ConfigError, opt, require

RECIPES: dict[str, dict[str, Any]] = {
    "dstrain": dict(
        mask_count="nonspecial",      # exactly mlm_probability of the maskable tokens
        copy_vocab_transform=True,    # the whole MLM head: a fully mapped student reproduces the teacher
        student_dropout="teacher",    # the student regularised like its teacher
        warmup_style="dstrain",       # the first step already trains (lr = peak / W)
        layer_map="even",             # the paper's author: even layers worked better
    ),
    "reference": dict(
        mask_count="reference",       # distiller.prepare_batch_mlm: ceil(p * sum of lengths)
        copy_vocab_transform=False,   # extract_distilbert.py without --vocab_transform
        student_dropout="0.1",        # training_configs/distilbert-base-uncased.json
        warmup_style="reference",     # transformers.get_linear_schedule_with_warmup, as distiller.py builds it
        layer_map="reference",        # extract_distilbert.py: teacher layers [0, 2, 4, 7, 9, 11]
    ),
}


def apply_recipe(cfg: Any, recipe: str) -> None:
    """Set every recipe setting of `cfg` that is still None (not given) to `recipe`'s value."""
    if recipe not in RECIPES:
        raise ConfigError(f"--recipe {recipe!r}: unknown; choose {' or '.join(RECIPES)}")
    for k, v in RECIPES[recipe].items():
        if hasattr(cfg, k) and getattr(cfg, k) is None:
            setattr(cfg, k, v)


def parse_dropout(value: str) -> float | None:
    """--student_dropout: "teacher" -> None (copy the teacher's), else a float in [0, 1)."""
    if str(value) == "teacher":
        return None
    try:
        p = float(value)
    except ValueError:
        p = -1.0
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"--student_dropout {value!r}: use teacher (copy the teacher's) or a number in [0, 1)")
    return p


@dataclasses.dataclass
class StudentSettings:
    """The teacher and how the student is made from it: shared by `distill` and `init_student` (which writes the
    student `distill` would start from). None: the --recipe's value."""

    teacher: str = opt(None, "teacher: a save_pretrained folder or a cached Hugging Face name (a family of "
                             "docs/FAMILIES.md)")
    recipe: str = opt("dstrain", "defaults of the settings where dstrain and the reference code differ (mask_count, "
                                 "copy_vocab_transform, student_dropout, warmup_style, layer_map; docs/FIDELITY.md): "
                                 "dstrain, or reference (the reference code's choices); explicit flags win")
    student_layers: int = opt(0, "student depth; 0 = half the teacher's layers")
    layer_map: str | None = opt(None, "teacher layers copied into the student: even, reference ([0,2,4,7,9,11] for "
                                "12->6) or a list. None: the --recipe's (dstrain: even)")
    student_init: str = opt("teacher", "teacher (copy embeddings, MLM head, mapped layers) or random (ablation)")
    copy_vocab_transform: bool | None = opt(None, "copy the MLM head's transform + LayerNorm from the teacher (false: "
                                            "random init, the reference's default). None: the --recipe's (dstrain: true)")
    student_dropout: str | None = opt(None, "student hidden and attention dropout: teacher (copy the teacher's) or a "
                                      "number (the reference: 0.1). None: the --recipe's (dstrain: teacher)")

    def validate_student(self) -> None:
        apply_recipe(self, self.recipe)  # fills the recipe settings not given
        require(bool(self.teacher), "teacher", "is required: a folder written by save_pretrained or a model name")
        require(self.student_layers >= 0, "student_layers", "must be >= 0 (0 = half the teacher)")
        require(self.student_init in ("teacher", "random"), "student_init", "must be teacher or random")
        parse_dropout(self.student_dropout)
