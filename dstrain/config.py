"""Config dataclasses built from CLI flags, with errors that name the setting to change.

Every command has one dataclass config. `build_config(Cls, kwargs)` resolves it with the precedence
defaults < `--config FILE.json` < command-line flags, coerces the values Fire parsed to the declared
field types, rejects unknown flags (with a "did you mean" suggestion) and calls the config's
`validate()`, so a typo or a contradiction stops the run before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar


class UserError(Exception):
    """An error the user can fix (bad input, bad setting). The CLI prints it without a traceback."""


class ConfigError(UserError):
    """A setting that is unknown, of the wrong type, or contradicts another one."""


# errno of an OSError the user fixes outside the program -> what to do; the CLIs print these on one line
OS_ERROR_FIXES = {
    errno.ENOSPC: "Free space there (or lower --keep_last) and relaunch the same command: a training run resumes "
                  "from its last complete checkpoint, which is kept",
    errno.EDQUOT: "Free space within your quota and relaunch the same command: a training run resumes from its "
                  "last complete checkpoint, which is kept",
    errno.EROFS: "It is on a read-only filesystem: choose an output folder on a writable one",
    errno.EACCES: "Choose a path you are allowed to use, or fix its permissions",
    errno.EPERM: "Choose a path you are allowed to use, or fix its permissions",
}


def os_error_message(e: BaseException | None, out_dir: str | None = None) -> str | None:
    """One line for an OSError (or an error caused by one) that the user can fix, else None.

    torch.save reports a failed write without its errno ("unexpected pos ...", "file write failed"); such an
    error while `out_dir`'s filesystem is (nearly) full is a full disk too."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    for x in chain:
        if isinstance(x, OSError) and x.errno in OS_ERROR_FIXES:
            where = f"{x.filename}: " if x.filename else ""
            return f"{where}{x.strerror or os.strerror(x.errno)}. {OS_ERROR_FIXES[x.errno]}"
    torch_write = [x for x in chain if isinstance(x, RuntimeError) and any(
        s in str(x) for s in ("inline_container", "PytorchStreamWriter", "file write failed"))]
    if torch_write and out_dir:
        import shutil

        where = Path(out_dir)
        while not where.exists() and where != where.parent:
            where = where.parent
        free = shutil.disk_usage(where).free
        if free < 16 << 20:
            first = str(torch_write[0]).strip().splitlines()[0][:200]
            return (f"{out_dir}: no space left on device ({free // 1024} KiB free; a write failed: {first}). "
                    f"{OS_ERROR_FIXES[errno.ENOSPC]}")
    return None


def flag_value(argv: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in a command line, or None."""
    for i, a in enumerate(argv):
        if a == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


T = TypeVar("T")


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Turn what Fire parsed (or JSON held) into the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(name, value, a)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"--{name}: cannot use {value!r}")
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v != ""]
        elif not isinstance(value, (list, tuple)):
            value = [value]
        inner = args[0] if args else Any
        out = [_coerce(name, v, inner) for v in value]
        return tuple(out) if origin is tuple else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"--{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"--{name} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
        raise ConfigError(f"--{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"--{name} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"--{name} must be a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (list, tuple)):  # Fire turns "a,b" into a tuple
            return ",".join(str(v) for v in value)
        return str(value)
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def build_config(cls: type[T], kwargs: dict[str, Any], command: str | None = None) -> T:
    """Resolve `cls` from defaults < `kwargs['config']` (a JSON file) < the other kwargs.

    Unknown keys, in the file or on the command line, are an error that suggests the nearest
    known setting. Calls `validate()` on the result when the class defines it.
    """
    command = command or cls.__name__
    kwargs = dict(kwargs)
    kwargs.pop("local_rank", None)  # the deepspeed launcher appends --local_rank=N
    types_ = _field_types(cls)
    values: dict[str, Any] = {}
    cfg_file = kwargs.pop("config", None)
    if cfg_file is not None and "config" not in types_:
        path = Path(str(cfg_file))
        if not path.is_file():
            raise ConfigError(f"--config {path}: no such file; pass a JSON file of settings for `{command}`")
        try:
            file_values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
        if not isinstance(file_values, dict):
            raise ConfigError(f"--config {path}: expected a JSON object of settings")
        _check_known(file_values, types_, command, where=f"in {path}")
        values.update(file_values)
    elif cfg_file is not None:
        kwargs["config"] = cfg_file
    _check_known(kwargs, types_, command, where="on the command line")
    values.update(kwargs)
    coerced = {k: _coerce(k, v, types_[k]) for k, v in values.items()}
    cfg = cls(**coerced)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def _check_known(values: dict[str, Any], types_: dict[str, Any], command: str, where: str) -> None:
    unknown = [k for k in values if k not in types_]
    if not unknown:
        return
    msgs = []
    for k in unknown:
        near = difflib.get_close_matches(k, list(types_), n=1, cutoff=0.6)
        hint = f" (did you mean --{near[0]}?)" if near else ""
        msgs.append(f"--{k}{hint}")
    raise ConfigError(
        f"unknown setting(s) for `{command}` {where}: {', '.join(msgs)}. "
        f"Known settings: {', '.join('--' + t for t in sorted(types_))}"
    )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` so that `path` is either absent, the old file, or the complete new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def require(cond: bool, setting: str, message: str) -> None:
    """Raise ConfigError naming `--setting` unless `cond` holds. For use in `validate()`."""
    if not cond:
        raise ConfigError(f"--{setting}: {message}")


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = dataclasses.MISSING):
    """A config field with a one-line help that `cli.py COMMAND --help` prints."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})
