"""`python dstrain/cli.py COMMAND --help`: every setting of every command, with its default and one-line doc."""

import dataclasses
import subprocess
import sys

import pytest

from dstrain.cli import COMMANDS, _help, _load
from tests.launch import ROOT


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_setting_with_its_doc(command):
    cfg_cls = _load(command).config_class
    text = _help(command)
    for f in dataclasses.fields(cfg_cls):
        doc = f.metadata.get("help", "")
        assert doc, f"{cfg_cls.__name__}.{f.name} has no one-line help: declare it with dstrain.config.opt(default, help)"
        line = next((l for l in text.splitlines() if l.startswith(f"  --{f.name} = ")), None)
        assert line is not None and line.endswith(f"  {doc}"), (f.name, line)


def test_help_from_the_command_line():
    out = subprocess.run([sys.executable, "dstrain/cli.py", "glue_table", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "Settings (defaults < --config FILE.json < flags):" in out.stdout and "  --teacher = " in out.stdout
