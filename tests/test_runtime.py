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
