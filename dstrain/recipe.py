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

from typing import Any

from dstrain.config import ConfigError

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
