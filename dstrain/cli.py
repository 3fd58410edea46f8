"""dstrain command line: a thin Fire map of commands; each lives in its own module.

    python dstrain/cli.py distill --teacher bert-base-uncased --data shards/ --out_dir runs/d1 \
        --ds_config ds_configs/zero2_fp16.json --max_steps 100000
    deepspeed dstrain/cli.py distill ...        # one process per GPU (DeepSpeed launcher)
    python dstrain/cli.py COMMAND --help        # the settings of a command

Commands are imported only when called, so `finetune --help` does not pay for DeepSpeed's import.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import os
import sys

if __package__ in (None, ""):  # run as a script: `python dstrain/cli.py` or `deepspeed dstrain/cli.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dstrain.config import UserError, flag_value, os_error_message  # noqa: E402 (after the path fix above)

# command name -> "module:function". Each function takes **kwargs and builds its dataclass config.
COMMANDS = {
    "distill": "dstrain.train.commands:distill",
    "pretrain": "dstrain.train.commands:pretrain",
    "init_student": "dstrain.init_student:init_student",
    "finetune": "dstrain.finetune.run:finetune",
    "glue_table": "dstrain.finetune.table:glue_table",
    "benchmark": "dstrain.benchmark.run:benchmark",
    "study": "dstrain.study.run:study",
}


def _load(command: str):
    module, func = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), func)


def _lazy(command: str):
    def run(*args, **kwargs):
        if args:  # Fire hands words without a --flag over as positionals; no command takes any
            raise UserError(f"`{command}`: unexpected argument(s) {' '.join(map(repr, args))}: every setting is "
                            f"--name VALUE (see `python dstrain/cli.py {command} --help`); quote a value with spaces")
        return _load(command)(**kwargs)

    run.__name__ = command
    run.__doc__ = f"`{command}`: see `python dstrain/cli.py {command} --help`."
    return run


def _strip_launcher_args(argv: list[str]) -> list[str]:
    """Drop `--local_rank=N` that the deepspeed launcher appends; LOCAL_RANK is in the environment too."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("--local_rank="):
            continue
        if a == "--local_rank":
            skip = True
            continue
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    import fire  # lazy: `COMMAND --help` returns before Fire is needed

    argv = _strip_launcher_args(sys.argv[1:] if argv is None else argv)
    if len(argv) >= 2 and argv[0] in COMMANDS and argv[1] in ("--help", "-h", "help"):
        print(_help(argv[0]))
        return
    code = 0
    try:
        fire.Fire({name: _lazy(name) for name in COMMANDS}, command=argv, name="dstrain")
    except UserError as e:
        print(f"dstrain: error: {e}", file=sys.stderr, flush=True)
        code = 2
    except Exception as e:  # a full disk, a read-only or forbidden path: the user's to fix, not a traceback
        msg = os_error_message(e, flag_value(argv, "out_dir"))
        if msg is None:
            raise
        print(f"dstrain: error: {msg}", file=sys.stderr, flush=True)
        code = 2
    if code:
        # Exit outside the except block, after a collection: the error's traceback no longer holds the trainer,
        # so its engine and process group are released now, not torn down with the interpreter (where a rank
        # raced its peers and aborted: "terminate called without an active exception", exit 250).
        gc.collect()
        sys.exit(code)


def _help(command: str) -> str:
    """The command's docstring and its config's fields with their defaults and one-line docs."""
    fn = _load(command)
    lines = [f"python dstrain/cli.py {command} [--setting VALUE ...]", "", (fn.__doc__ or "").strip(), ""]
    cfg_cls = getattr(fn, "config_class", None)
    if cfg_cls is not None:
        lines.append("Settings (defaults < --config FILE.json < flags):")
        for f in dataclasses.fields(cfg_cls):
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else "REQUIRED")
            lines.append(f"  --{f.name} = {default!r}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
