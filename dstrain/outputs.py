"""Output folders: never an input, never someone else's folder, one run at a time.

Every command that writes a folder calls, before any work:
    check_out_dir(out, "distill", {"teacher": t, "data": d})   # refuse overlap with inputs, foreign folders
and, when it starts writing (rank 0; `lock_out_dir` is the collective form for multi-rank jobs):
    lock = RunLock.acquire(out, "distill")                    # one run per folder; writes the marker

Two files mark what dstrain owns:
    OUT/.dstrain.json   written into every folder a command creates: {"command", "created", "host", ...}.
                        A non-empty folder without it (and without the files an older dstrain left, see
                        `_legacy_command`) was not written by dstrain and is refused; a folder written by
                        another command is refused too (`init_student --overwrite` into a distill run).
    OUT/.dstrain.lock   while a run writes the folder: {"host", "pid", "command", "started", "argv"}, held
                        with fcntl.flock, so a killed run releases it; removed when the run ends. A lock file
                        whose flock is free was left by a run that died: it is taken over with a log line.
`--overwrite` removes only entries the command owns (`remove_owned`): what its marker lists, or names
matching the command's patterns; anything else in the folder stops the command instead.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import fnmatch
import json
import logging
import os
import shutil
import socket
import sys
import time
import weakref
from pathlib import Path
from typing import Any, Iterable, Mapping

from dstrain.config import UserError, atomic_write_json

log = logging.getLogger("dstrain")

MARKER = ".dstrain.json"
_MARKER_TMP = MARKER + ".tmp-"  # atomic_write_text's temporary name for the marker
LOCK = ".dstrain.lock"


# ------------------------------------------------------------------------------------------ checks
def _overlap(out: Path, path: Path) -> str | None:
    """How `out` overlaps `path` ("is", "is inside", "contains"), both with symlinks resolved, or None."""
    o, p = out.resolve(), path.resolve()
    if o == p:
        return "is"
    if p in o.parents:
        return "is inside"
    if o in p.parents:
        return "contains"
    return None


def check_not_inputs(out: str | os.PathLike, inputs: Mapping[str, Any], setting: str = "out_dir") -> None:
    """Refuse an output equal to, inside, or containing an input that exists on disk.

    inputs: {setting name: path or list of paths}; hub names and empty values (not on disk) are skipped.
    """
    out = Path(out)
    for name, value in inputs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not v or not Path(str(v)).exists():
                continue
            how = _overlap(out, Path(str(v)))
            if how:
                raise UserError(f"--{setting} {out} {how} the input --{name} {v}: an output must never overwrite an "
                                f"input. Choose an --{setting} outside it (and not holding it)")


def read_marker(out: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _legacy_command(out: Path) -> str | None:
    """The command whose files an older dstrain (before the marker) left in `out`, or None."""
    def load(name: str) -> Any:
        try:
            return json.loads((out / name).read_text())
        except (OSError, ValueError):
            return None

    cfg = load("config.json")
    if isinstance(cfg, dict) and cfg.get("command") in ("distill", "pretrain"):
        return cfg["command"]
    if isinstance(cfg, dict) and "task" in cfg and "model" in cfg:
        return "finetune"
    if (out / "dstrain_init.json").is_file():
        return "init_student"
    if (out / "train_tokenizer.json").is_file():
        return "train_tokenizer"
    manifest = load("manifest.json")
    if (isinstance(manifest, dict) and manifest.get("format") == "dstrain-shards-v1") or (out / ".dstrain-build").exists():
        return "build_shards"
    if (out / "benchmark.json").is_file():
        return "benchmark"
    return None


def _entries(out: Path) -> list[str]:
    """What a folder holds besides dstrain's bookkeeping: the marker, the lock, and a marker half-written by a
    run killed mid-write (atomic_write_text's `.dstrain.json.tmp-PID`, which RunLock.acquire removes)."""
    return sorted(p.name for p in out.iterdir() if p.name not in (MARKER, LOCK) and not p.name.startswith(_MARKER_TMP))


def _listing(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_out_dir(out: str | os.PathLike, command: str, inputs: Mapping[str, Any] | None = None,
                  setting: str = "out_dir") -> dict[str, Any] | None:
    """Every check on an output folder that can be made before writing anything; raises UserError.

    Refuses: a path that is a file; an output overlapping an input; a non-empty folder that dstrain did
    not write, or that another command wrote; a folder (or its nearest existing parent) this process
    cannot write. Returns the folder's marker (None for a new or empty folder).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--{setting} {out}: exists and is a file, not a folder; choose a folder path")
    check_not_inputs(out, inputs or {}, setting)
    holder = _busy(out)
    if holder is not None:  # first: a run that is writing the folder leaves half-written files in it
        raise UserError(_busy_message(out, holder, setting))
    marker = None
    if out.is_dir() and _entries(out):
        marker = read_marker(out)
        owner = marker.get("command") if marker else _legacy_command(out)
        if owner is None:
            raise UserError(f"--{setting} {out}: not empty and not written by dstrain (it holds "
                            f"{_listing(_entries(out))}); choose a new or empty folder")
        if owner != command:
            raise UserError(f"--{setting} {out}: holds the output of `{owner}`, not of `{command}`; dstrain does not "
                            f"write into (or delete) another command's results. Choose a new or empty folder")
        marker = marker or {"command": owner}
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--{setting} {out}: {parent} is not writable (permission denied or a read-only "
                        f"filesystem); choose a folder you can write to")
    return marker


def foreign_entries(out: Path, marker: dict[str, Any] | None, patterns: Iterable[str] = ()) -> list[str]:
    """Entries of `out` its command did not write: neither listed in the marker nor matching `patterns`."""
    listed = set((marker or {}).get("files", ()))
    pats = tuple(patterns)
    return [n for n in _entries(out) if n not in listed and not any(fnmatch.fnmatch(n, p) for p in pats)]


def remove_owned(out: Path, marker: dict[str, Any] | None, patterns: Iterable[str] = (), setting: str = "out_dir") -> None:
    """--overwrite: delete what the command wrote in `out`; refuse (deleting nothing) if anything else is there."""
    foreign = foreign_entries(out, marker, patterns)
    if foreign:
        raise UserError(f"--{setting} {out}: --overwrite would only replace what dstrain wrote, but the folder also "
                        f"holds {_listing(foreign)}. Move those away or choose a new folder")
    listed = set((marker or {}).get("files", ()))
    for name in _entries(out):
        if name in listed or any(fnmatch.fnmatch(name, p) for p in patterns):
            p = out / name
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def write_marker(out: Path, command: str, files: list[str] | None = None) -> None:
    """The ownership marker; `files` lists the entries a command writing its folder at once created."""
    m = {"command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
         "argv": sys.argv}
    if files is not None:
        m["files"] = sorted(files)
    atomic_write_json(out / MARKER, m)


def replace_dir(stage: Path, out: Path, marker: dict[str, Any] | None, patterns: Iterable[str] = (),
                setting: str = "out_dir") -> None:
    """Put a fully written `stage` folder at `out`: what was there must be ours (see remove_owned)."""
    if out.is_dir():
        remove_owned(out, marker, patterns, setting)
        (out / MARKER).unlink(missing_ok=True)
        out.rmdir()
    os.replace(stage, out)


# ------------------------------------------------------------------------------------------ lock
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(h: dict[str, Any]) -> str:
    job = f", Slurm job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
    return (f"`{h.get('command', '?')}` pid {h.get('pid', '?')} on host {h.get('host', '?')}{job}, started "
            f"{h.get('started', '?')}")


class RunLock:
    """One writer per output folder (see the module docstring). Keep the object for the run's lifetime."""

    # this process's locks by folder: a second acquire reuses the first; an object nobody keeps is released
    _held: "weakref.WeakValueDictionary[str, RunLock]" = weakref.WeakValueDictionary()

    def __init__(self, out: Path, f):
        self.out, self.path, self._f = out, out / LOCK, f

    @classmethod
    def acquire(cls, out: str | os.PathLike, command: str, setting: str = "out_dir") -> "RunLock":
        out = Path(out)
        key = str(out.resolve())
        held = cls._held.get(key)
        if held is not None:
            return held
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = cls._take(out, command, setting)
            if read_marker(out) is None:
                write_marker(out, command)
            for debris in out.glob(_MARKER_TMP + "*"):  # a marker write whose run was killed: under the lock, no
                debris.unlink(missing_ok=True)           # other writer is alive (seen: SIGKILL mid-write)
        except OSError as e:
            raise UserError(f"--{setting} {out}: cannot write there ({e.strerror}); choose a folder you can "
                            f"write to") from None
        cls._held[key] = lock
        return lock

    @classmethod
    def _take(cls, out: Path, command: str, setting: str) -> "RunLock":
        path = out / LOCK
        for _ in range(10):  # the file can be removed by its holder between our open and our flock
            f = open(path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                raise UserError(_busy_message(out, _holder(path), setting)) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
                return cls._take_without_flock(out, f, command, setting)
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                f.close()
                continue
            old = _holder(path)
            if old:
                log.warning("--%s %s: taking over the lock of %s: that run ended without releasing it (killed or "
                            "crashed)", setting, out, _describe(old))
            lock = cls(out, f)
            lock._write(command)
            return lock
        raise UserError(f"--{setting} {out}: could not take {path} (it keeps being replaced); is another run starting?")

    @classmethod
    def _take_without_flock(cls, out: Path, f, command: str, setting: str) -> "RunLock":
        """Filesystems without flock (Lustre mounted without -o flock): the holder's pid is all there is."""
        old = _holder(out / LOCK)
        if old and not (old.get("host") == socket.gethostname() and not _alive(int(old.get("pid", 0)))):
            f.close()
            raise UserError(f"--{setting} {out}: another run is writing this folder ({_describe(old)}); this filesystem "
                            f"has no file locks, so if that run is gone, delete {out / LOCK} and relaunch")
        if old:
            log.warning("--%s %s: taking over the lock of %s, which is no longer running", setting, out, _describe(old))
        log.warning("--%s %s: the filesystem does not support flock; one run per folder is checked by pid only",
                    setting, out)
        lock = cls(out, f)
        lock._write(command)
        return lock

    def _write(self, command: str) -> None:
        h = {"host": socket.gethostname(), "pid": os.getpid(), "command": command,
             "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
             "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        self._f.seek(0)
        self._f.truncate()
        self._f.write(json.dumps(h) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def release(self) -> None:
        """Remove the lock file (under the lock), then unlock. Safe to call twice."""
        if self._f is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        self._f.close()
        self._f = None
        RunLock._held.pop(str(self.out.resolve()), None)

    def __del__(self):
        try:
            self.release()
        except Exception:
            pass


@atexit.register
def _release_all() -> None:  # interpreter exit without a kill: leave no lock file behind
    for lock in list(RunLock._held.values()):
        lock.release()


def _busy_message(out: Path, holder: dict[str, Any], setting: str) -> str:
    return (f"--{setting} {out}: another run is writing this folder ({_describe(holder)}). One run per folder: "
            f"wait for it to end, stop it, or choose another --{setting}")


def _busy(out: Path) -> dict[str, Any] | None:
    """The holder of `out`'s lock when another live run holds it, else None. Only probes: takes nothing."""
    path = out / LOCK
    if not path.is_file() or str(out.resolve()) in RunLock._held:
        return None
    try:
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(path)
            except OSError:
                return None  # a filesystem without flock: RunLock.acquire's fallback decides
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def _holder(path: Path) -> dict[str, Any]:
    """The JSON a holder wrote into the lock file ({} while it has not written it yet)."""
    for _ in range(20):
        try:
            h = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            h = None
        if isinstance(h, dict):
            return h
        time.sleep(0.05)
    return {}


def lock_out_dir(out: str | os.PathLike, command: str, rank: int, world_size: int) -> RunLock | None:
    """Collective: rank 0 takes the folder's lock, and every rank raises its error (none waits for a peer)."""
    lock, err = None, None
    if rank == 0:
        try:
            lock = RunLock.acquire(out, command)
        except UserError as e:
            err = str(e)
    if world_size > 1:
        import torch.distributed as tdist

        box = [err]
        tdist.broadcast_object_list(box, src=0)
        err = box[0]
    if err:
        raise UserError(err)
    return lock
