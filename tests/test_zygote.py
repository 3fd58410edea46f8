"""The tests' rank server (tests/zygote.py) stands in for interpreter start-up and the deepspeed launcher in most
multi-rank tests, so it must give a rank what the launcher gives it, end a job the way the launcher ends it, and
share nothing of dstrain between ranks. Checked against the real launcher where it can be (its own version)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.launch import BIN, ROOT, cpu_env, free_port
from tests.zygote import ForkedRanks

LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "CROSS_RANK", "CROSS_SIZE")


def dump_state(argv: list[str]) -> None:
    """A rank's view: its launcher variables, and which modules it found already imported."""
    out = Path(argv[0]) / f"rank{os.environ.get('RANK', 'single')}.json"
    out.write_text(json.dumps({"env": {k: os.environ.get(k) for k in LAUNCHER_VARS},
                               "preloaded": {m: m in sys.modules for m in ("torch", "deepspeed", "transformers",
                                                                           "dstrain.train.step", "dstrain.train.run")},
                               "inject": "sitecustomize" in sys.modules}))


def fail_or_wait(argv: list[str]) -> None:
    """Rank 1 exits with code 3 once rank 0 is up; rank 0 waits (in a sleep a SIGTERM ends)."""
    folder = Path(argv[0])
    if os.environ["RANK"] == "1":
        while not (folder / "rank0-up").exists():
            time.sleep(0.05)
        sys.exit(3)
    signal.signal(signal.SIGTERM, lambda *_: (folder.joinpath("rank0-got-sigterm").touch(), sys.exit(0)))
    (folder / "rank0-up").touch()
    time.sleep(600)


def test_a_forked_rank_gets_the_launchers_variables_and_no_dstrain_of_the_server(tmp_path):
    fresh, forked = tmp_path / "fresh", tmp_path / "forked"
    fresh.mkdir()
    forked.mkdir()
    script = tmp_path / "dump.py"
    script.write_text(f"import sys; sys.path.insert(0, {str(ROOT)!r}); sys.argv = sys.argv[:1] + "
                      f"[a for a in sys.argv[1:] if not a.startswith('--local_rank')]\n"
                      f"from tests.test_zygote import dump_state; dump_state(sys.argv[1:])\n")
    subprocess.run([str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", "2", "--master_port", str(free_port()),
                    str(script), str(fresh)], env=cpu_env(), cwd=ROOT, check=True, capture_output=True, timeout=300)
    job = ForkedRanks([str(forked)], 2, cpu_env(), tmp_path / "log", entry="tests.test_zygote:dump_state")
    assert job.wait(120) == 0, (tmp_path / "log").read_text()
    for rank in (0, 1):
        launched = json.loads((fresh / f"rank{rank}.json").read_text())
        got = json.loads((forked / f"rank{rank}.json").read_text())
        assert got["env"] == launched["env"], (got["env"], launched["env"])
        assert got["preloaded"] == {"torch": True, "deepspeed": True, "transformers": True,
                                    "dstrain.train.step": False, "dstrain.train.run": False}


def test_a_sitecustomize_on_pythonpath_is_imported_as_at_interpreter_start(tmp_path):
    inject = Path(__file__).resolve().parent / "faults" / "inject"
    env = cpu_env(PYTHONPATH=os.pathsep.join([str(inject), str(ROOT)]))
    job = ForkedRanks([str(tmp_path)], 1, env, tmp_path / "log", entry="tests.test_zygote:dump_state")
    assert job.wait(120) == 0, (tmp_path / "log").read_text()
    assert json.loads((tmp_path / "ranksingle.json").read_text())["inject"] is True


def test_a_failed_rank_ends_the_job_with_its_code_and_the_others_get_sigterm(tmp_path):
    """As deepspeed.launcher.launch: the first non-zero exit SIGTERMs the other ranks; the job exits with it."""
    t0 = time.monotonic()
    job = ForkedRanks([str(tmp_path)], 2, cpu_env(), tmp_path / "log", entry="tests.test_zygote:fail_or_wait")
    assert job.wait(120) == 3, (tmp_path / "log").read_text()
    assert (tmp_path / "rank0-got-sigterm").exists()
    assert time.monotonic() - t0 < 60
