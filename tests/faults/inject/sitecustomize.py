"""Fault injection for tests/faults, inside the real trainer processes: no product code changes.

Python imports `sitecustomize` at start-up from the first sys.path entry that has one; tests/faults puts
this folder on PYTHONPATH of the runs it launches, so every process of the job (launcher and ranks) loads
it. It does nothing unless DSTRAIN_INJECT holds a JSON object; its keys (all optional):

    rank            the only rank (RANK of the launcher) that acts on the fault keys below; default 0
    kill_at_micro   SIGKILL this rank at the start of its N-th micro-step (1-based) of this process: with
                    grad_accum_steps 2, N = 2k is mid-way through optimizer step k (one micro-batch's
                    backward done, the other not), so the other ranks are left inside the step
    hang_at_micro   this rank stops at the start of its N-th micro-step and sleeps forever, alive (a rank stuck
                    in a hung read or kernel): the other ranks wait for it in their next collective
    nan_weight_at_step
                    right after optimizer step N this rank writes NaN into the last row of its position
                    embeddings (a row no sequence reaches, so the loss stays finite): a weight gone bad in memory
    kill_on_replace SIGKILL this rank just before it os.replace()s a file whose path ends with this string
                    (e.g. "step-00000006/COMPLETE": dies mid-save, everything but the marker written)
    fill_after_replace  right after this rank's first os.replace() onto a path ending with this string (e.g.
                    "checkpoints/latest": the first checkpoint is complete), fill the filesystem of the path
                    `fill_file` with zeros until it is full (a disk that fills up at a known moment)
    rmtree_fails    shutil.rmtree of a folder with this name raises PermissionError on this rank
                    (an undeletable old checkpoint, e.g. on a filesystem that refuses the unlink)
    trace           folder: every rank appends one JSON line per micro-step to trace/rank<R>.jsonl with
                    the optimizer step being computed and a fingerprint of each sample of the micro-batch
                    (its original token ids, recovered from the masked input and the MLM labels)
    note            folder: before a kill or a hang this rank writes note/killed.json {rank, time, what}

The trace is written and flushed before the micro-step runs, so a SIGKILL never loses a line.
"""

from __future__ import annotations

import json
import os

_SPEC = json.loads(os.environ.get("DSTRAIN_INJECT") or "{}")
_RANK = os.environ.get("RANK")  # set by the launcher for ranks only; the launcher itself has none


def _note(what: str) -> None:
    import time

    if _SPEC.get("note"):
        os.makedirs(_SPEC["note"], exist_ok=True)
        with open(os.path.join(_SPEC["note"], "killed.json"), "w") as f:
            json.dump({"rank": int(_RANK), "time": time.time(), "what": what}, f)


def _die(what: str) -> None:
    import signal
    import sys

    _note(what)
    print(f"[fault injection] rank {_RANK}: SIGKILL {what}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def _fingerprints(batch) -> list[str]:
    """One short hash per row: the sample's original ids (masked positions restored from the labels)."""
    import hashlib

    ids, am, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    orig = ids.where(labels == -100, labels)
    out = []
    for row, m in zip(orig.tolist(), am.tolist()):
        toks = row[: sum(m)]
        out.append(hashlib.sha1(json.dumps(toks).encode()).hexdigest()[:16])
    return out


def _patch_step(module) -> None:
    """Wrap dstrain.train.step.micro_step (run.py imports it by name when the loop starts)."""
    orig = module.micro_step
    calls = [0]
    acts = str(_SPEC.get("rank", 0)) == _RANK

    def micro_step(engine, teacher, batch, *args, **kwargs):
        calls[0] += 1
        if acts and _SPEC.get("nan_weight_at_step") and not getattr(engine, "_fault_step_wrapped", False):
            _wrap_engine_step(engine, int(_SPEC["nan_weight_at_step"]))
        if _SPEC.get("trace"):
            os.makedirs(_SPEC["trace"], exist_ok=True)
            with open(os.path.join(_SPEC["trace"], f"rank{_RANK}.jsonl"), "a") as f:
                f.write(json.dumps({"step": int(engine.global_steps) + 1, "rows": _fingerprints(batch)}) + "\n")
                f.flush()
        if acts and calls[0] == _SPEC.get("kill_at_micro"):
            _die(f"at micro-step {calls[0]} (optimizer step {int(engine.global_steps) + 1})")
        if acts and calls[0] == _SPEC.get("hang_at_micro"):
            import sys
            import time

            _note(f"hangs at micro-step {calls[0]}")
            print(f"[fault injection] rank {_RANK}: hangs at micro-step {calls[0]}", file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        return orig(engine, teacher, batch, *args, **kwargs)

    module.micro_step = micro_step


def _wrap_engine_step(engine, at_step: int) -> None:
    """engine.step (looked up on the instance by micro_step) followed by NaN written into one weight."""
    import sys

    import torch

    real_step = engine.step

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        if int(engine.global_steps) == at_step:
            for name, p in engine.module.named_parameters():
                if "position_embeddings" in name:
                    with torch.no_grad():
                        p.data[-1].fill_(float("nan"))
                    print(f"[fault injection] rank {_RANK}: NaN written into {name} after step {at_step}",
                          file=sys.stderr, flush=True)
                    break
        return out

    engine.step = step
    engine._fault_step_wrapped = True


def _after_import(name: str, patch) -> None:
    """Run patch(module) right after `name` is first imported."""
    import importlib.abc
    import importlib.util
    import sys

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                patch(module)

            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, Finder())


def _install() -> None:
    acts = str(_SPEC.get("rank", 0)) == _RANK
    if _SPEC.get("trace") or (acts and {"kill_at_micro", "hang_at_micro", "nan_weight_at_step"} & set(_SPEC)):
        _after_import("dstrain.train.step", _patch_step)
    if acts and _SPEC.get("kill_on_replace"):
        real_replace = os.replace

        def replace(src, dst, *a, **kw):
            if str(dst).endswith(_SPEC["kill_on_replace"]):
                _die(f"before os.replace(..., {dst})")
            return real_replace(src, dst, *a, **kw)

        os.replace = replace
    if acts and _SPEC.get("fill_after_replace"):
        inner_replace, filled = os.replace, []

        def replace_then_fill(src, dst, *a, **kw):
            r = inner_replace(src, dst, *a, **kw)
            if not filled and str(dst).endswith(_SPEC["fill_after_replace"]):
                filled.append(True)
                chunk = b"\0" * (1 << 20)
                with open(_SPEC["fill_file"], "wb") as f:
                    try:
                        while True:
                            f.write(chunk)
                            f.flush()
                    except OSError:
                        pass
            return r

        os.replace = replace_then_fill
    if acts and _SPEC.get("rmtree_fails"):
        import shutil

        real_rmtree = shutil.rmtree

        def rmtree(path, *a, **kw):
            if os.path.basename(os.path.normpath(str(path))) == _SPEC["rmtree_fails"]:
                if kw.get("ignore_errors"):
                    return None
                raise PermissionError(13, "Permission denied (injected)", str(path))
            return real_rmtree(path, *a, **kw)

        shutil.rmtree = rmtree


if _SPEC and _RANK is not None:
    _install()
