"""Atomic, resumable training checkpoints around DeepSpeed's `save_checkpoint` (docs/DESIGN.md contract).

Layout of `RUN/checkpoints/`:
    step-00001000/                 DeepSpeed's files (model + ZeRO optimizer partitions + scheduler)
        dstrain_rank000.pt ...     per rank: RNG states (python, numpy, torch, cuda) and data position
        dstrain_state.json         step, world size, config hash, teacher and tokenizer fingerprints
        COMPLETE                   written last: JSON {step, files: {relative path: size in bytes},
                                   sha256: {relative path: hex digest}}
    latest                         the newest complete tag, replaced atomically after COMPLETE
    diverged-step-00001234/        a run stopped for NaN / stuck loss scale: saved for inspection,
                                   never named by `latest`, never resumed from, never rotated away

A checkpoint counts only if COMPLETE exists and every file it lists is present with its size and its
sha256, so a crash (or kill) mid-save, a truncated, deleted or overwritten file is never taken for a good
checkpoint: the loader logs why it skipped it and falls back to the previous complete one. Keep-last-K
counts only checkpoints that verify (a damaged one never makes it delete the last good one), and deletes
old checkpoints marker first (a half-deleted one is then just incomplete); a failed deletion is logged,
not fatal. A complete checkpoint is never deleted to be saved again. All ranks call `save`; rank 0 alone
writes the shared files. Assumes a shared filesystem.

Hashing costs one read of the checkpoint at save and one at resume (rank 0); a folder verified by this
process and unchanged since (same sizes and mtimes) is not hashed again (keep-last-K checks every save).

`export_student` turns the final checkpoint into the run's `student/` (a Hugging Face model folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dstrain.config import UserError, atomic_write_json, atomic_write_text
from dstrain.families import family_of
from dstrain.models import save_hf_model
from dstrain.runtime import device_type

log = logging.getLogger("dstrain")

TAG_RE = re.compile(r"^step-(\d{8})$")
MARKER = "COMPLETE"
STATE = "dstrain_state.json"


def step_tag(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (dropout, masking, shuffling)."""
    st = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device_type() == "cuda":  # not on a CPU run of a GPU host (DS_ACCELERATOR=cpu): no CUDA context
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if "cuda" in st and device_type() == "cuda":
        torch.cuda.set_rng_state(st["cuda"])


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _broadcast(obj: Any) -> Any:
    """rank 0's `obj` on every rank (the resume decision must be the same everywhere)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def _files(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file() and p.name != MARKER}


def sha256_file(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


# folder -> (stat signature) of the folders this process hashed and found good: see the module docstring
_VERIFIED: dict[str, tuple] = {}


def _signature(d: Path) -> tuple:
    return tuple((str(p.relative_to(d)), p.stat().st_size, p.stat().st_mtime_ns)
                 for p in sorted(d.rglob("*")) if p.is_file())


def mark_complete(d: Path, step: int) -> None:
    """Write the COMPLETE marker listing every file of `d` with its size and sha256 (last step of a save)."""
    for p in d.glob("*.tmp-*"):
        p.unlink(missing_ok=True)
    files = _files(d)
    atomic_write_json(d / MARKER, {"step": step, "files": files, "sha256": {rel: sha256_file(d / rel) for rel in files}})
    _VERIFIED[str(d)] = _signature(d)


def verify(d: Path) -> str | None:
    """None if `d` is a complete checkpoint whose files all have their recorded size and sha256, else why
    not (for the log). A marker from before checksums (no "sha256") is checked by size only."""
    marker = d / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the save did not finish)"
    try:
        m = json.loads(marker.read_text())
        listed, digests = m["files"], m.get("sha256", {})
        if not isinstance(listed, dict) or not isinstance(digests, dict):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return "COMPLETE marker is unreadable"
    for rel, size in listed.items():
        p = d / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, {size} expected (truncated?)"
    sig = _signature(d)
    if _VERIFIED.get(str(d)) == sig:
        return None
    for rel, digest in digests.items():
        if rel not in listed or sha256_file(d / rel) != digest:
            return f"{rel} does not match its sha256 in {MARKER} (its content changed on disk)"
    _VERIFIED[str(d)] = sig
    return None


def nonfinite_params(module: torch.nn.Module) -> list[str]:
    """Names of the parameters whose local values (this rank's ZeRO-3 partition, else the whole tensor) hold
    NaN or inf."""
    out = []
    for name, p in module.named_parameters():
        t = getattr(p, "ds_tensor", None)
        t = p.data if t is None else t
        if t.numel() and not bool(torch.isfinite(t).all()):
            out.append(name)
    return out


def on_rank0(fn) -> Any:
    """fn() evaluated on rank 0 only and its result given to every rank; a UserError it raises is raised on
    every rank (the others would otherwise wait forever for rank 0)."""
    found: Any = None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or \
            torch.distributed.get_rank() == 0:
        try:
            found = ("ok", fn())
        except UserError as e:
            found = ("error", str(e))
    found = _broadcast(found)
    if found[0] == "error":
        raise UserError(found[1])
    return found[1]


class Checkpointer:
    """Save / find / load checkpoints of one run. Create on every rank with the same arguments."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int, rank: int, world_size: int):
        self.root = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size

    # ------------------------------------------------------------------ save
    def save(self, engine: Any, step: int, meta: dict[str, Any], rank_state: dict[str, Any],
             tag: str | None = None, update_latest: bool = True) -> Path:
        """Collective: every rank calls it at the same step. Returns the checkpoint folder."""
        tag = tag or step_tag(step)
        d = self.root / tag
        # A complete checkpoint of this step holds this very state (a run resumed from it and stopped before
        # its next step): keep it rather than delete it to write it again, which a kill would make a loss.
        if on_rank0(lambda: d.is_dir() and verify(d) is None):
            log.info("checkpoint %s is already complete; kept as it is", d)
            if update_latest and self.rank == 0:
                atomic_write_text(self.root / "latest", tag)
                self._rotate()
            _barrier()
            return d
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            if d.exists():  # an earlier attempt at this step that never completed (or was damaged): start clean
                (d / MARKER).unlink(missing_ok=True)
                shutil.rmtree(d, ignore_errors=True)
        _barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        tmp = d / f"dstrain_rank{self.rank:03d}.pt.tmp"
        torch.save(rank_state, tmp)
        os.replace(tmp, d / f"dstrain_rank{self.rank:03d}.pt")
        _barrier()
        if self.rank == 0:
            atomic_write_json(d / STATE, {**meta, "step": step, "world_size": self.world_size, "tag": tag})
            mark_complete(d, step)
            if update_latest:
                atomic_write_text(self.root / "latest", tag)
                self._rotate()
        _barrier()
        return d

    def _rotate(self) -> None:
        """Keep the newest `keep_last` verified checkpoints; drop older ones and older partial or damaged ones.
        Only checkpoints whose files verify count, so a damaged newer one never pushes out the last good one."""
        if self.keep_last <= 0:
            return
        tags = sorted(p.name for p in self.root.iterdir() if TAG_RE.match(p.name))
        why = {t: verify(self.root / t) for t in tags}
        complete = [t for t in tags if why[t] is None]
        keep = set(complete[-self.keep_last:])
        newest = complete[-1] if complete else None
        for t in tags:
            if t in keep or (newest is not None and t > newest):
                continue
            d = self.root / t
            try:
                (d / MARKER).unlink(missing_ok=True)  # first, so a half-deleted folder is just incomplete
                shutil.rmtree(d)
                log.info("deleted old checkpoint %s (keeping the last %d%s)", d, self.keep_last,
                         f"; it was not usable: {why[t]}" if why[t] else "")
            except OSError as e:
                log.warning("could not delete old checkpoint %s (%s); continuing, delete it by hand", d, e)

    # ------------------------------------------------------------------ find / load
    def find_resume(self) -> str | None:
        """Tag of the newest verified complete checkpoint (decided on rank 0, same on all ranks)."""
        return on_rank0(self._find_resume_local)

    def _find_resume_local(self) -> str | None:
        if not self.root.is_dir():
            return None
        tags = sorted((p.name for p in self.root.iterdir() if TAG_RE.match(p.name)), reverse=True)
        latest_file = self.root / "latest"
        # `latest` is only a hint (the folders decide); a corrupted one may hold any bytes
        latest = latest_file.read_text(errors="replace").strip() if latest_file.is_file() else None
        chosen = None
        for t in tags:
            why = verify(self.root / t)
            if why is None:
                chosen = t
                break
            log.warning("checkpoint %s is not usable: %s; trying the previous one", self.root / t, why)
        if latest is not None and chosen is not None and latest != chosen:
            log.warning("checkpoints/latest names %r but the newest complete checkpoint is %s; using %s",
                        latest[:80], chosen, chosen)
        if chosen is None and tags:
            raise UserError(
                f"{self.root}: found {len(tags)} checkpoint folder(s) ({', '.join(sorted(tags)[-3:])}) but none is "
                f"complete; refusing to silently start over. Delete {self.root} (or use a new --out_dir) to start "
                f"from scratch.")
        return chosen

    def has_complete(self) -> bool:
        """Cheap (no hashing, any rank, before the process group): some checkpoint has its COMPLETE marker."""
        return self.root.is_dir() and any(TAG_RE.match(p.name) and (p / MARKER).is_file() for p in self.root.iterdir())

    def has_any(self) -> bool:
        return self.root.is_dir() and any(TAG_RE.match(p.name) for p in self.root.iterdir())

    def load(self, engine: Any, tag: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load engine state (weights, optimizer, scheduler) and return (meta, this rank's state)."""
        d = self.root / tag
        meta = json.loads((d / STATE).read_text())
        if meta["world_size"] != self.world_size:
            # DeepSpeed's ds_to_universal cannot convert these (they lack its universal_checkpoint_info), so
            # say only what works
            fp32 = self.root / "zero_to_fp32.py"
            weights = (f" The weights so far: python {fp32} {self.root} WEIGHTS_DIR --tag {tag}." if fp32.is_file()
                       else "")
            raise UserError(
                f"{d} was saved by {meta['world_size']} ranks but this run has {self.world_size}. Resume with "
                f"{meta['world_size']} ranks: the data position and the ZeRO optimizer partitions are per rank, so "
                f"a run cannot change its number of ranks; to go on with {self.world_size}, start a new "
                f"--out_dir.{weights}")
        path, _ = engine.load_checkpoint(str(self.root), tag=tag, load_optimizer_states=True,
                                         load_lr_scheduler_states=True)
        if path is None:
            raise UserError(f"DeepSpeed could not load checkpoint {d}; delete it to fall back to the previous one")
        rank_state = torch.load(d / f"dstrain_rank{self.rank:03d}.pt", weights_only=False)
        return meta, rank_state


def check_resume_compatible(meta: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to resume with another teacher or tokenizer; warn about other changed settings."""
    for key, flag in (("teacher_fingerprint", "--teacher"), ("tokenizer_fingerprint", "--data (its tokenizer)")):
        if meta.get(key) != current.get(key):
            raise UserError(
                f"{where} was trained with a different {key.split('_')[0]} ({meta.get(key)} vs now "
                f"{current.get(key)}). Resume with the same {flag}, or start a new --out_dir.")
    if meta.get("config_hash") != current.get("config_hash"):
        old, new = meta.get("config", {}), current.get("config", {})
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        log.warning("resuming %s with changed settings: %s", where, ", ".join(changed) or "(unknown)")


# ------------------------------------------------------------------ export
def _export_state_dict(engine, ckpt_root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 weights of the student (rank 0): from the ZeRO partitions of the final checkpoint."""
    if engine.zero_optimization_stage() >= 1:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_root), tag=tag)
    else:
        sd = {k: v.float() for k, v in engine.module.state_dict().items()}
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}


def export_student(engine: Any, ckpt_root: Path, tag: str, student_config: Any, out_dir: Path,
                   tokenizer_dir: Path) -> None:
    """Rank 0: write the student of checkpoint `tag` as a Hugging Face model (+ the shards' tokenizer) into
    `out_dir`, loadable with `AutoModelForMaskedLM` (or the family's class). Refuses non-finite weights:
    the checkpoint check stops such a run first, this is the last line of defence."""
    sd = _export_state_dict(engine, ckpt_root, tag)
    bad = sorted(k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all())
    if bad:
        raise UserError(f"not exporting {out_dir}: {len(bad)} weight tensors of {ckpt_root / tag} hold NaN/inf "
                        f"({', '.join(bad[:3])})")
    model = family_of(student_config, "--teacher").auto_class().from_config(student_config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    tied = ("vocab_projector.weight", "decoder.weight", "lm_head.weight")
    if unexpected or [k for k in missing if not k.endswith(tied)]:
        raise RuntimeError(f"export: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    save_hf_model(model, out_dir, tokenizer_dir)
