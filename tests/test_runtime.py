"""dstrain.runtime: the process-level pieces every command shares."""

import glob
import os
import subprocess
import sys
import textwrap

from tests.launch import BIN, ROOT, cpu_env, free_port


def test_two_cpu_ranks_leave_no_shm_buffers_behind(tmp_path):
    """DeepSpeed's CPU all-reduce creates a 66 MB /dev/shm file per rank and never removes it; ours unlinks
    them once mapped, so runs do not leak RAM (a day of test runs once filled 22 GB). The all-reduce op is
    compiled into this virtualenv's own extensions folder, not the user-wide ~/.cache/torch_extensions."""
    script = tmp_path / "allreduce.py"
    script.write_text(textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(ROOT)!r})
        import torch
        from dstrain.runtime import init_distributed
        d = init_distributed()
        x = torch.ones(4) * (d.rank + 1)
        torch.distributed.all_reduce(x)
        open({str(tmp_path)!r} + f"/rank{{d.rank}}", "w").write(str(x[0].item()))
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()  # exiting with gloo threads alive can abort a rank
    """))
    port = free_port()
    env = cpu_env()
    env.pop("TORCH_EXTENSIONS_DIR", None)
    proc = subprocess.run([str(BIN / "deepspeed"), "--num_nodes", "1", "--num_gpus", "2", "--master_port", str(port),
                           str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["3.0", "3.0"], proc.stdout[-3000:]
    assert glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}_*") == []
    # the ranks run the launcher's python: the tests' venv (scripts/test.sh), possibly seen through another path
    venv = os.path.realpath(sys.prefix)
    assert glob.glob(f"{venv}/torch_extensions/*/*/deepspeed_shm_comm*.so"), proc.stdout[-3000:]


def test_torch_extensions_dir_set_by_the_user_wins(tmp_path):
    code = "import os, dstrain.runtime; print(os.environ['TORCH_EXTENSIONS_DIR'])"
    env = cpu_env(TORCH_EXTENSIONS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(tmp_path)


def test_device_type_honours_ds_accelerator_on_a_gpu_host(monkeypatch):
    """On a GPU host with DS_ACCELERATOR=cpu the engine runs on CPU, so every device decision says cpu
    (Trainer.prepare used to pick CUDA by torch.cuda.is_available() alone). The GPU host is simulated."""
    import torch

    from dstrain.runtime import device_type

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    assert device_type() == "cpu"
    monkeypatch.delenv("DS_ACCELERATOR")
    assert device_type() == "cuda"
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    assert device_type() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_type() == "cpu"


def test_free_port_draws_below_the_ephemeral_range_with_its_own_generator():
    """A port found by binding port 0 is an ephemeral one, which any outgoing connection (gloo opens one per
    peer) can take in the seconds before the rendezvous binds it: EADDRINUSE, seen in CI with three test
    workers. free_port draws outside that range, ports that are free, independently of the seeded global RNG
    (training seeds it; every process would otherwise draw the same port)."""
    import random
    import socket

    from dstrain.runtime import _ephemeral_range

    lo, hi = _ephemeral_range()
    random.seed(0)
    first = [free_port() for _ in range(8)]
    random.seed(0)
    second = [free_port() for _ in range(8)]
    assert first != second
    for port in first + second:
        assert not lo <= port <= hi, (port, lo, hi)
        with socket.socket() as s:
            s.bind(("", port))  # free: raises if not


def test_a_world_of_one_does_not_depend_on_a_port_picked_in_advance(tmp_path):
    """`python dstrain/cli.py ...` (no launcher) binds its store to a port the kernel picks at bind time, so
    no other process can take the port between the pick and the bind. Here every port picked in advance is
    already taken (the race lost on purpose); the world of one still starts, and its MASTER_PORT, which names
    DeepSpeed's /dev/shm buffer, is the port its own store holds. That port is then in this process's
    environment, and a child started as a run of its own must not inherit it (EADDRINUSE seen in CI: a test
    process that had run a world of one in-process passed it to every launch after it)."""
    script = tmp_path / "one.py"
    script.write_text(textwrap.dedent(f"""
        import os, socket, sys; sys.path.insert(0, {str(ROOT)!r})
        import torch
        import dstrain.runtime as runtime
        squat = socket.socket(); squat.bind(("", 0)); squat.listen()
        runtime.free_port = lambda: squat.getsockname()[1]   # whatever is picked in advance is taken
        d = runtime.init_distributed(1)
        x = torch.ones(2); torch.distributed.all_reduce(x)
        port = int(os.environ["MASTER_PORT"])
        held = socket.socket()
        try:
            held.bind(("", port)); print("FREE", port)
        except OSError:
            print("HELD", port, d.world_size, x.tolist())
        from tests.launch import cpu_env
        print("CHILD", sorted(set(runtime.DIST_VARS) & (set(runtime.child_env()) | set(cpu_env()))))
        torch.distributed.destroy_process_group()
    """))
    env = cpu_env(PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-2].startswith("HELD") and "1 [1.0, 1.0]" in lines[-2], proc.stdout
    assert lines[-1] == "CHILD []", proc.stdout
