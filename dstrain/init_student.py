"""`init_student`: write a student initialised from a teacher, without training, to inspect or fine-tune it.

    python dstrain/cli.py init_student --teacher bert-base-uncased --out_dir students/d6
    python dstrain/cli.py init_student --teacher runs/teacher/student --out_dir s --layer_map reference

The student (layout and layer maps: dstrain/models.py) is written to a staging folder beside --out_dir and
renamed into place, so --out_dir is either the old folder or the complete new one. `--overwrite true`
replaces only a folder that init_student wrote (dstrain/outputs.py): never the teacher, a distill run or a
folder holding anything else.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from dstrain.config import UserError, build_config, opt, require
from dstrain.hf_io import has_tokenizer
from dstrain.outputs import MARKER, check_out_dir, foreign_entries, replace_dir, write_marker
from dstrain.recipe import StudentSettings, parse_dropout

log = logging.getLogger("dstrain")


@dataclasses.dataclass
class InitStudentConfig(StudentSettings):
    """Write a student initialised from a teacher, without training, to inspect it (the student settings:
    dstrain/recipe.py `StudentSettings`, the same as `distill`'s)."""

    out_dir: str = opt(None, "folder to write the student to (config, safetensors, tokenizer)")
    seed: int = opt(0, "seed for the random parts")
    overwrite: bool = opt(False, "replace an --out_dir that an earlier init_student wrote")

    def validate(self) -> None:
        self.validate_student()
        require(bool(self.out_dir), "out_dir", "is required: where to write the student")


def init_student(**kwargs) -> str:
    """Build a student from --teacher (half its layers, mapped layers copied) and save it to --out_dir."""
    from dstrain.models import build_student, load_teacher, save_hf_model  # lazy: imports torch (`--help` stays fast)

    cfg = build_config(InitStudentConfig, kwargs, "init_student")
    out = Path(cfg.out_dir)
    marker = check_out_dir(out, "init_student", {"teacher": cfg.teacher})
    if marker is not None and not cfg.overwrite:
        raise UserError(f"--out_dir {out}: exists and is not empty; choose a new folder or pass --overwrite true")
    foreign = foreign_entries(out, marker) if marker is not None else []
    if foreign:  # replace_dir checks again before the swap; this fails before the work
        raise UserError(f"--out_dir {out}: holds files init_student did not write ({', '.join(foreign[:5])}); "
                        f"--overwrite replaces only its own files. Move them away or choose a new folder")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    teacher = load_teacher(cfg.teacher)
    student, lmap = build_student(teacher, teacher.config, cfg.student_layers or None, cfg.layer_map,
                                  cfg.student_init, cfg.seed, cfg.copy_vocab_transform,
                                  parse_dropout(cfg.student_dropout))
    tok_dir = cfg.teacher if has_tokenizer(cfg.teacher) else None
    if tok_dir is None:
        log.warning("--teacher %s has no tokenizer files; the student folder will have none (finetune it with "
                    "--tokenizer, the tokenizer the teacher was trained with)", cfg.teacher)
    stage = out.with_name(f"{out.name}.init-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    save_hf_model(student, stage, tok_dir)
    n_s = sum(p.numel() for p in student.parameters())
    n_t = sum(p.numel() for p in teacher.parameters())
    info = {"teacher": cfg.teacher, "layer_map": lmap, "student_init": cfg.student_init,
            "student_params": n_s, "teacher_params": n_t}
    (stage / "dstrain_init.json").write_text(json.dumps(info, indent=2) + "\n")
    write_marker(stage, "init_student", files=[p.name for p in stage.iterdir() if p.name != MARKER])
    try:
        replace_dir(stage, out, marker)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    print(f"student {student.config.model_type} with {n_s / 1e6:.2f}M parameters "
          f"({100 * n_s / n_t:.0f}% of the teacher), layer map {lmap}, written to {out}")
    return str(out)


init_student.config_class = InitStudentConfig
