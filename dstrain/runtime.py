"""Process-level runtime shared by every command: where this process sits (world, rank, device), the
process group, stop signals (`Preemption`) and DeepSpeed config resolution.

One code path for CPU (gloo) and GPU (NCCL). Launch any of:
    python dstrain/cli.py distill ...                          # one process, no launcher needed
    deepspeed dstrain/cli.py distill ...                       # DeepSpeed launcher, one rank per GPU
    torchrun --nproc_per_node 8 dstrain/cli.py distill ...     # or torchrun / srun (see slurm/)
On a machine without CUDA, DS_ACCELERATOR=cpu is set before DeepSpeed is imported.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import logging
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from dstrain.config import ConfigError, UserError

log = logging.getLogger("dstrain")


def own_extensions_dir() -> None:
    """Build DeepSpeed's JIT ops (the CPU all-reduce, CPU Adam) inside this virtualenv, not the user-wide
    ~/.cache/torch_extensions: two environments sharing that folder (a second checkout, CI beside a dev
    venv) rebuild each other's copy, about 27 s at every start. A TORCH_EXTENSIONS_DIR already set wins;
    outside a virtualenv (sys.prefix not ours to write) torch's default stays.

    One subfolder per path the venv is reached by: the compiler flags name the include paths as Python
    sees them, so a venv reached through a symlink and through its real path would otherwise rebuild the
    same op over each other's copy at every switch."""
    if sys.prefix != sys.base_prefix:
        seen_as = sys.prefix.strip(os.sep).replace(os.sep, "_")
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions", seen_as))


own_extensions_dir()  # at import: every path to DeepSpeed in dstrain passes through this module

# Top-level keys DeepSpeed 0.19 reads. DeepSpeed silently ignores anything else, so a misspelled
# "zero_optimisation" would quietly train without ZeRO; we refuse unknown keys instead.
KNOWN_DS_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "optimizer",
    "scheduler", "communication_data_type", "prescale_gradients", "gradient_predivide_factor",
    "sparse_gradients", "fp16", "bf16", "bfloat16", "amp", "torch_autocast", "gradient_clipping",
    "zero_optimization", "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer",
    "activation_checkpointing", "aio", "flops_profiler", "wall_clock_breakdown", "memory_breakdown",
    "steps_per_print", "dump_state", "tensorboard", "wandb", "csv_monitor", "comet", "comms_logger",
    "autotuning", "elasticity", "data_efficiency", "curriculum_learning", "compression_training",
    "checkpoint", "data_types", "sparse_attention", "pipeline", "eigenvalue", "progressive_layer_drop",
    "quantize_training", "hybrid_engine", "compile", "nebula", "disable_allgather", "dataloader_drop_last",
    "seq_parallel_communication_data_type", "use_data_before_expert_parallelism", "timers",
    "weight_quantization", "zero_allow_comm_data_type_fp32", "graph_harvesting", "use_node_local_storage",
    "load_universal_checkpoint", "mics_shard_size", "mics_hierarchical_params_gather",
    "gradient_allreduce_op", "expert_parallel", "managed_gradient_accumulation", "disable_python_gc",
    "log_level", "tensor_parallel", "zenflow",
    "comment",  # ours: free text describing the file
}
KNOWN_PRECISION_KEYS = {
    "fp16": {"enabled", "auto_cast", "loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
             "consecutive_hysteresis", "min_loss_scale", "fp16_master_weights_and_grads"},
    "bf16": {"enabled", "immediate_grad_update", "check_grad_overflow", "bf16_master_weights_and_grads",
             "bf16_optimizer_states"},
}
BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@dataclasses.dataclass(frozen=True)
class Dist:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: Any  # torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port that is free now, for a rendezvous that binds it later (seconds later, after imports).

    Not port 0's answer: that comes from the kernel's ephemeral range, which the kernel also hands to every
    outgoing connection (gloo opens one per peer), so in the seconds before the store binds it another
    process's connection could take it: EADDRINUSE, seen with three test workers side by side. A port below
    the range is only ever taken by someone binding it on purpose. The draw uses its own generator: the
    global one is seeded by training, and every process would otherwise draw the same port."""
    lo, hi = _ephemeral_range()
    span = range(max(1024, lo - 20000), lo) if lo - 1024 >= 1000 else range(hi + 1, 65536)
    draw = random.SystemRandom()
    for _ in range(200):
        port = draw.choice(span)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything outside the range is taken: the kernel's choice is all that is left
        s.bind(("", 0))
        return s.getsockname()[1]


# What a launcher sets for one rank (and what a world of one sets for itself: MASTER_PORT names its store).
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "CROSS_RANK", "CROSS_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that is a run of its own (a study step, a check's command).

    Without the rendezvous variables: inherited, they would make the child join this process's world, or
    bind the port this process's store holds (EADDRINUSE: a test process that had run a world of one
    in-process passed its MASTER_PORT to the launches after it)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(extra)
    return env


def world_from_env() -> tuple[int, int]:
    """(world size, rank) before the process group exists: launcher variables, Slurm's, or a world of one."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]), int(os.environ.get("RANK", "0"))
    if "SLURM_NTASKS" in os.environ and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_NTASKS"]), int(os.environ["SLURM_PROCID"])
    return 1, 0


class Preemption:
    """SIGUSR1/SIGTERM (and SIGINT, Ctrl-C) set a flag; the training loop all-reduces it at the next step
    boundary, so every rank stops at the same step, saves and exits 0.

    Installed when the command starts (before the imports and the process group, which take tens of
    seconds), so a signal that Slurm sends during start-up is not lost: the run stops at its first step
    boundary. Once the run has decided to stop, `ignore()` makes further signals harmless: Python restores
    default handlers at interpreter shutdown, and a late SIGUSR1 would then kill a rank that is exiting.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.flag = False
        self.signum = None
        for s in self.SIGNALS:
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        if not self.flag:  # the first signal is the reason (after Ctrl-C the launcher adds a SIGTERM)
            self.signum = signum
        self.flag = True

    def ignore(self) -> None:
        for s in self.SIGNALS:
            signal.signal(s, signal.SIG_IGN)


def _default_group_timeout(minutes: float) -> None:
    """Make `minutes` the timeout of every process group created from now on. DeepSpeed creates its own
    groups (ZeRO's gradient reduction runs in one) with torch's default timeout, 30 minutes, whatever the
    world group has: a stuck rank then held the others for 30 minutes instead of --dist_timeout_minutes
    (tests/faults/test_signals.py). torch reads these module defaults each time a group is made."""
    from torch.distributed import distributed_c10d as c10d

    c10d.default_pg_timeout = datetime.timedelta(minutes=minutes)
    if hasattr(c10d, "default_pg_nccl_timeout"):
        c10d.default_pg_nccl_timeout = datetime.timedelta(minutes=minutes)


def device_type() -> str:
    """"cuda" or "cpu": the one device decision of dstrain, the accelerator DeepSpeed will use.

    DS_ACCELERATOR=cpu forces the CPU path even on a GPU host (the tests do this); no CUDA implies it. Every
    place that picks a device, precision or ds_config default before the engine exists asks this, so what it
    prepares matches the engine's device."""
    import torch

    return "cuda" if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu" else "cpu"


def init_distributed(timeout_minutes: float = 30.0) -> Dist:
    """Initialise torch.distributed through DeepSpeed, launched or not.

    Without a launcher (no RANK in the environment) this becomes a world of one, so the same code
    runs as `python dstrain/cli.py ...`. Backend: NCCL when CUDA is present, else gloo. `timeout_minutes`
    bounds every collective, DeepSpeed's own groups included.
    """
    import torch

    use_cuda = device_type() == "cuda"
    if not use_cuda:
        os.environ["DS_ACCELERATOR"] = "cpu"
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "WORLD_SIZE" not in os.environ:
        # `srun python dstrain/cli.py ...` with one task per rank: translate Slurm's variables.
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        if os.environ["WORLD_SIZE"] != "1" and not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise UserError(
                f"srun started {os.environ['WORLD_SIZE']} tasks but MASTER_ADDR/MASTER_PORT are not set: export them "
                f"before srun (the first node of the job and a free port), or use the templates in slurm/, which "
                f"start one torchrun per node")
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_SIZE="1")
    import deepspeed

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    _default_group_timeout(timeout_minutes)  # before any group: the world's and DeepSpeed's own
    if not deepspeed.comm.is_initialized():
        if world == 1 and not os.environ.get("MASTER_PORT") and not torch.distributed.is_initialized():
            _world_of_one(backend, timeout_minutes)
        deepspeed.init_distributed(dist_backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
        if not use_cuda:
            _unlink_shm_buffers(rank)
    return Dist(rank=rank, local_rank=local_rank, world_size=world, device=device)


def _world_of_one(backend: str, timeout_minutes: float) -> None:
    """The process group of a run without a launcher, on a store bound to a port the kernel picks at bind.

    Picking a port first and binding it later can lose it to another process in between (EADDRINUSE); a
    store bound to port 0 cannot. MASTER_PORT is then set to the bound port: DeepSpeed's CPU all-reduce
    names its /dev/shm buffer after it, and a bound port is one no concurrent run on this machine has.
    DeepSpeed's init_distributed then finds the group made and keeps it."""
    import torch

    timeout = datetime.timedelta(minutes=timeout_minutes)
    store = torch.distributed.TCPStore("127.0.0.1", 0, 1, True, timeout=timeout)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(store.port)
    torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)


def _unlink_shm_buffers(rank: int) -> None:
    """Remove the name of this rank's DeepSpeed CPU all-reduce buffer from /dev/shm.

    DeepSpeed's CPU backend creates a 66 MB /dev/shm file per rank and never deletes it, so every run leaks
    RAM until reboot (a day of test runs filled 22 GB). `init_distributed` returns only after every rank has
    mapped every other rank's buffer; after a barrier the names are no longer needed, and the mappings stay
    valid after the unlink. A crash afterwards then leaks nothing either.
    """
    import glob

    import torch

    torch.distributed.barrier()
    pattern = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
               f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    for path in glob.glob(pattern):
        try:
            os.unlink(path)
        except OSError:
            pass


def load_ds_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a DeepSpeed JSON file and refuse keys DeepSpeed would silently ignore."""
    path = Path(path)
    if not path.is_file():
        shipped = sorted(p.name for p in (Path(__file__).resolve().parent.parent / "ds_configs").glob("*.json"))
        raise ConfigError(f"--ds_config {path}: no such file. Shipped configs in ds_configs/: {', '.join(shipped)}")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"--ds_config {path}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--ds_config {path}: cannot read it ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"--ds_config {path}: holds a JSON {type(cfg).__name__}, not an object of DeepSpeed "
                          f"settings such as {{\"zero_optimization\": {{\"stage\": 2}}}}")
    bad = [k for k in ("fp16", "bf16", "zero_optimization", "optimizer", "scheduler") if k in cfg and not isinstance(cfg[k], dict)]
    if bad:
        raise ConfigError(f"--ds_config {path}: \"{bad[0]}\" must be an object of settings (e.g. {{\"enabled\": true}}), "
                          f"got {json.dumps(cfg[bad[0]])}")
    check_ds_keys(cfg, str(path))
    return cfg


def check_ds_keys(cfg: dict[str, Any], where: str) -> None:
    def unknown(keys, known, scope):
        bad = [k for k in keys if k not in known]
        if bad:
            hints = []
            for k in bad:
                near = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
                hints.append(f'"{k}"' + (f' (did you mean "{near[0]}"?)' if near else ""))
            raise ConfigError(
                f"--ds_config {where}: unknown {scope} key(s) {', '.join(hints)}. DeepSpeed would silently "
                f"ignore them; fix the spelling or remove them."
            )

    unknown(cfg.keys(), KNOWN_DS_KEYS, "top-level")
    for section, keys in KNOWN_PRECISION_KEYS.items():
        if isinstance(cfg.get(section), dict):
            unknown(cfg[section].keys(), keys, f'"{section}"')
    zero = cfg.get("zero_optimization")
    if isinstance(zero, dict):
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        try:
            DeepSpeedZeroConfig(**zero)
        except Exception as e:  # pydantic ValidationError: names the bad field
            raise ConfigError(f"--ds_config {where}: bad \"zero_optimization\" section: {e}") from None


def derive_batch(
    micro_batch_size_per_gpu: int | None,
    grad_accum_steps: int | None,
    global_batch_size: int | None,
    world_size: int,
) -> tuple[int, int, int]:
    """Fill in the one missing of (micro, accumulation, global) and check global = micro x accum x world.

    Settings left as None are derived; if all three are given they must agree. Returns
    (micro_batch_size_per_gpu, grad_accum_steps, global_batch_size).
    """
    m, a, g = micro_batch_size_per_gpu, grad_accum_steps, global_batch_size
    for name, v in (("micro_batch_size_per_gpu", m), ("grad_accum_steps", a), ("global_batch_size", g)):
        if v is not None and v < 1:
            raise ConfigError(f"--{name} must be >= 1, got {v}")
    if m is None and a is None:
        a = 1
    if g is None:
        m = m or 1
        a = a or 1
        g = m * a * world_size
    elif m is None:
        if g % (a * world_size):
            raise ConfigError(
                f"--global_batch_size {g} is not divisible by grad_accum_steps {a} x world size {world_size}; "
                f"choose a global batch that is a multiple of {a * world_size}")
        m = g // (a * world_size)
    elif a is None:
        if g % (m * world_size):
            raise ConfigError(
                f"--global_batch_size {g} is not divisible by micro_batch_size_per_gpu {m} x world size "
                f"{world_size}; choose a multiple of {m * world_size} or change --micro_batch_size_per_gpu")
        a = g // (m * world_size)
    if m * a * world_size != g:
        raise ConfigError(
            f"batch settings disagree: micro_batch_size_per_gpu {m} x grad_accum_steps {a} x world size "
            f"{world_size} = {m * a * world_size}, but --global_batch_size is {g}. Drop one of the three "
            f"settings and it will be derived.")
    return m, a, g


def resolve_ds_config(
    cfg: dict[str, Any],
    *,
    micro_batch_size_per_gpu: int,
    grad_accum_steps: int,
    global_batch_size: int,
    precision: str = "config",
    device_type: str = "cpu",
    gradient_clipping: float | None = None,
) -> tuple[dict[str, Any], str]:
    """Final DeepSpeed dict: our batch fields, the precision this device can run, clipping, and the engine
    settings that cost time for nothing.

    `precision` is "config" (use the file's fp16/bf16 section), "fp16", "bf16" or "fp32". fp16 on a
    CPU becomes bf16 (DeepSpeed's CPU accelerator has no fp16 loss scaler), with a note in the log.
    Unless the file says otherwise: DeepSpeed's throughput timer is off (`timers.throughput.enabled`:
    without training data handed to the engine it synchronises the device every step, and dstrain
    logs its own tokens/s), and in a world of one ZeRO's `overlap_comm` is off (nothing to overlap;
    it only adds a stream synchronisation after backward). Returns (config, precision actually used).
    """
    import torch

    cfg = json.loads(json.dumps(cfg))  # deep copy
    cfg.pop("comment", None)
    for k, ours in zip(BATCH_KEYS, (global_batch_size, micro_batch_size_per_gpu, grad_accum_steps)):
        v = cfg.get(k, "auto")
        if v != "auto" and v != ours:
            raise ConfigError(
                f'ds_config sets "{k}": {v} but the run uses {ours}. Batch sizes come from the command line '
                f'(--micro_batch_size_per_gpu, --grad_accum_steps, --global_batch_size); set "{k}" to "auto" '
                f"or remove it from the DeepSpeed file.")
    cfg["train_batch_size"] = global_batch_size
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size_per_gpu
    cfg["gradient_accumulation_steps"] = grad_accum_steps
    if gradient_clipping is not None:
        cfg["gradient_clipping"] = gradient_clipping
    cfg.setdefault("timers", {"throughput": {"enabled": False}})
    zero = cfg.get("zero_optimization")
    world = global_batch_size // max(1, micro_batch_size_per_gpu * grad_accum_steps)
    if world == 1 and isinstance(zero, dict) and zero.get("overlap_comm"):
        cfg["zero_optimization"] = {**zero, "overlap_comm": False}

    if precision == "config":
        fp16 = bool(cfg.get("fp16", {}).get("enabled", False))
        bf16 = bool(cfg.get("bf16", {}).get("enabled", False))
        if fp16 and bf16:
            raise ConfigError('ds_config enables both "fp16" and "bf16"; enable one of them')
        precision = "fp16" if fp16 else "bf16" if bf16 else "fp32"
    if precision not in ("fp16", "bf16", "fp32"):
        raise ConfigError(f"--precision must be one of config, fp16, bf16, fp32; got {precision!r}")
    if precision == "fp16" and device_type != "cuda":
        log.warning("fp16 is not available on %s; using bf16 instead", device_type)
        precision = "bf16"
    if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("this GPU has no bf16; using fp16 with dynamic loss scaling instead")
        precision = "fp16"
    fp16_section = dict(cfg.get("fp16", {}))
    bf16_section = dict(cfg.get("bf16", {}))
    fp16_section["enabled"] = precision == "fp16"
    bf16_section["enabled"] = precision == "bf16"
    cfg["fp16"] = fp16_section
    cfg["bf16"] = bf16_section
    return cfg, precision


def setup_logging(rank: int) -> None:
    """INFO logs on rank 0, warnings only on the others, each line tagged with its rank."""
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s [rank{rank}] %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)


def require_file(path: str | os.PathLike, setting: str, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"--{setting} {p}: no such {what}")
    return p
