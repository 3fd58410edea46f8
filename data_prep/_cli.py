"""Run a data_prep command function from the command line (Fire), the way dstrain/cli.py runs its commands:
flags become kwargs of `fn(**kwargs)`, `--help` lists the config's settings, a UserError prints one line
(no traceback) and exits 2."""

from __future__ import annotations

import dataclasses
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as `python data_prep/build_shards.py` from anywhere
    sys.path.insert(0, ROOT)


def help_text(fn, prog: str) -> str:
    lines = [f"python {prog} [--setting VALUE ...]", "", (fn.__doc__ or "").strip(), "",
             "Settings (defaults < --config FILE.json < flags):"]
    for f in dataclasses.fields(fn.config_class):
        default = f.default if f.default is not dataclasses.MISSING else "REQUIRED"
        lines.append(f"  --{f.name} = {default!r}  {f.metadata.get('help', '')}")
    return "\n".join(lines)


def main(fn, prog: str, argv: list[str] | None = None) -> None:
    import fire

    from dstrain.config import UserError, flag_value, os_error_message

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("--help", "-h", "help") for a in argv[:1]) or argv == ["--help"]:
        print(help_text(fn, prog))
        return
    try:
        def run(*args, **kwargs) -> None:  # Fire would print the returned manifest
            if args:  # words without a --flag: Fire passes them as positionals
                raise UserError(f"unexpected argument(s) {' '.join(map(repr, args))}: every setting is --name VALUE "
                                f"(see `python {prog} --help`); quote a value with spaces")
            fn(**kwargs)

        fire.Fire(run, command=argv, name=prog)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Exception as e:  # a full disk, a read-only or forbidden path (dstrain.config.OS_ERROR_FIXES)
        msg = os_error_message(e, flag_value(argv, "out_dir"))
        if msg is None:
            raise
        print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
        sys.exit(2)
