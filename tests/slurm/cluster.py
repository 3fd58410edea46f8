"""A real multi-node Slurm cluster on this one machine, for the tests of `slurm/`.

    cluster = LocalSlurmCluster(tmp_dir, nodes=2)
    cluster.start()                       # munged (if not running), slurmctld, one slurmd per node
    job = cluster.sbatch("slurm/distill_8node.sh", "--nodes=2", env=...)
    info = cluster.wait(job)              # polls `scontrol show job` (accounting is off)
    cluster.stop()                        # stops exactly what start() started

Two ways to make several nodes on one host (`mode`):
- "netns": each node's slurmd runs in its own network + UTS namespace on a private bridge, with its
  own address and hostname, so jobs on different nodes see different hosts (as on a real cluster: the
  same rendezvous port can be bound on every node). Needs CAP_NET_ADMIN and CAP_SYS_ADMIN.
- "multi": several `slurmd -N NAME` in the host namespace, each with its own port; all nodes are
  127.0.0.1. The fallback where namespaces cannot be made.

The cluster is private: its slurm.conf and gres.conf live under `root` and are found through
SLURM_CONF (pass `cluster.env()` to every Slurm command), so /etc/slurm is never touched. The only
shared file it edits is /etc/hosts (node names must resolve, for `scontrol show hostnames` -> head
node address); its lines carry a per-cluster tag and are removed on stop. Nothing is stopped by
name: daemons by their recorded PIDs, job processes by the SLURM_CONF in their environment (or the
namespace they run in).

Facts behind the choices (Slurm 22.05 on Debian 12; see also ../shared/slurm-local-cluster.md):
- no systemd and no cgroups here: proctrack/linuxproc, task/none, accounting off;
- `ip netns exec` remounts /sys and slurmd then dies ("No filesystem mounted on /sys/fs/cgroup"),
  so slurmd enters the namespace with nsenter instead;
- a count-only gres line makes slurmd report 0 GPUs (node INVAL); fake GPUs are empty files.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from dstrain.runtime import free_port

SLURM_TOOLS = ("slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "munged", "munge", "unmunge")
ROOT = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = ROOT / "scripts" / "install_slurm.sh"


def slurm_unavailable_reason(install: bool = True) -> str | None:
    """None when Slurm can be used here (installing it first if root and allowed), else why not."""
    missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            return f"scripts/install_slurm.sh failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
        missing = [t for t in SLURM_TOOLS if shutil.which(t) is None]
    if missing:
        how = "run scripts/install_slurm.sh as root" if os.geteuid() != 0 else "no apt-get to install them"
        return f"Slurm/munge tools missing ({', '.join(missing)}); {how}"
    if os.geteuid() != 0:
        return "the local Slurm cluster must be started as root (slurmd runs jobs as any user)"
    return None


def _alive(pid: int) -> bool:
    """True for a running process; zombies count as gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _stop_pids(pids: list[int], grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL the ones still alive."""
    pids = [p for p in pids if _alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


class LocalSlurmCluster:
    """Controller + `nodes` slurmd daemons; see the module docstring."""

    def __init__(self, root: str | os.PathLike, nodes: int = 2, cpus_per_node: int = 2, gpus_per_node: int = 2,
                 mem_per_node_mb: int = 4000, mode: str = "auto", prefix: str = "dsn"):
        self.root = Path(root).resolve()
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.gpus_per_node = gpus_per_node
        self.mem_per_node_mb = mem_per_node_mb
        self.mode = mode
        self.prefix = prefix
        self.names = [f"{prefix}{i}" for i in range(1, nodes + 1)]
        self.conf = self.root / "slurm.conf"
        self.tag = f"# dstrain-test-slurm {self.root}"
        self.pids: list[int] = []  # daemons we started, in start order
        self.netns: list[str] = []
        self.links: list[str] = []
        self.subnet = ""
        self.started = False

    # ---- environment for Slurm commands ---------------------------------------------------------------
    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, env: dict | None = None,
            **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), env=env or self.env(), capture_output=True, text=True, timeout=timeout,
                              **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return proc

    # ---- bring-up -------------------------------------------------------------------------------------
    def start(self) -> "LocalSlurmCluster":
        t0 = time.time()
        for d in ("ctld", "log", "run", "spool", "fakegpu"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        self.started = True  # from here on, stop() cleans whatever was made
        try:
            if self.mode == "auto":
                self.mode = "netns" if self._try_netns() else "multi"
            elif self.mode == "netns" and not self._try_netns():
                raise RuntimeError("mode='netns' asked but network namespaces cannot be made here")
            self._write_conf()
            self._write_hosts()
            self._start_munge()
            self._start_slurmctld()
            self._start_slurmds()
            self._wait_idle(timeout=60)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.time() - t0
        return self

    def _try_netns(self) -> bool:
        """Make the bridge and one namespace per node; False (and nothing left behind) if we can't."""
        if not (shutil.which("ip") and shutil.which("nsenter") and shutil.which("unshare")):
            return False
        used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
        for third in range(77, 250):  # a private /24 that this host does not use yet
            if f"10.{third}.0." not in used and f"10.{third}." not in used:
                self.subnet = f"10.{third}.0"
                break
        br = f"{self.prefix}br{os.getpid() % 10000}"
        sh = subprocess.run
        try:
            sh(["ip", "link", "add", br, "type", "bridge"], check=True, capture_output=True)
            self.links.append(br)
            sh(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", br], check=True, capture_output=True)
            sh(["ip", "link", "set", br, "up"], check=True, capture_output=True)
            for i, name in enumerate(self.names, 1):
                ns = f"{self.prefix}ns{os.getpid() % 10000}-{i}"
                veth = f"{self.prefix}v{os.getpid() % 10000}-{i}"
                sh(["ip", "netns", "add", ns], check=True, capture_output=True)
                self.netns.append(ns)
                sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns], check=True,
                   capture_output=True)
                self.links.append(veth)
                sh(["ip", "link", "set", veth, "master", br, "up"], check=True, capture_output=True)
                sh(["ip", "-n", ns, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0"], check=True,
                   capture_output=True)
                sh(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True, capture_output=True)
                sh(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, capture_output=True)
            return True
        except (subprocess.CalledProcessError, OSError):
            self._remove_netns()
            self.subnet = ""
            return False

    def addr(self, i: int) -> str:
        return f"{self.subnet}.{10 + i}" if self.subnet else "127.0.0.1"

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctl_addr = f"{self.subnet}.1" if self.mode == "netns" else "127.0.0.1"
        self.ctld_port = free_port()
        gres = ""
        if self.gpus_per_node:
            # Fake GPUs so templates that ask for `--gpus-per-node` schedule: empty files as devices.
            for g in range(self.gpus_per_node):
                (self.root / "fakegpu" / f"nvidia{g}").touch()
            (self.root / "gres.conf").write_text(
                "AutoDetect=off\n"
                f"Name=gpu File={self.root}/fakegpu/nvidia[0-{self.gpus_per_node - 1}]\n")
            gres = f"Gres=gpu:{self.gpus_per_node}"
        lines = [
            f"# private test cluster ({self.mode}, {self.nodes} nodes), made by tests/slurm/cluster.py",
            "ClusterName=dstraintest",
            f"SlurmctldHost={host}({ctl_addr})",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # A requeued job may start only after its old credential expires (default 120 s); 10 s keeps
            # the preemption test short without changing what the templates do.
            "AuthInfo=cred_expire=10",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "MpiDefault=none", "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobRequeue=1",
            # Tests poll `scontrol show job`; keep finished jobs visible long enough.
            "MinJobAge=600",
            # Scheduling passes: the default (60 s backfill / event driven) is fine, but a requeued job
            # should start again within seconds.
            "SchedulerParameters=sched_interval=2,bf_interval=2",
            "KillWait=10",
            "GresTypes=gpu" if self.gpus_per_node else "",
            f"StateSaveLocation={self.root}/ctld",
            f"SlurmdSpoolDir={self.root}/spool/%n",
            f"SlurmctldPidFile={self.root}/run/slurmctld.pid",
            f"SlurmdPidFile={self.root}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={self.root}/log/slurmctld.log",
            f"SlurmdLogFile={self.root}/log/slurmd-%n.log",
            "SlurmctldDebug=info", "SlurmdDebug=info",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
        ]
        for i, name in enumerate(self.names, 1):
            if self.mode == "netns":
                where = f"NodeAddr={self.addr(i)}"
            else:
                where = f"NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()}"
            lines.append(f"NodeName={name} {where} CPUs={self.cpus_per_node} RealMemory={self.mem_per_node_mb} "
                         f"{gres} State=UNKNOWN")
        lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO")
        self.conf.write_text("\n".join(line for line in lines if line) + "\n")

    def _write_hosts(self) -> None:
        entries = []
        for i, name in enumerate(self.names, 1):
            entries.append(f"{self.addr(i)} {name} {self.tag}")
            if self.mode == "netns":  # c10d looks the peer up by its v4-mapped v6 address too
                entries.append(f"::ffff:{self.addr(i)} {name} {self.tag}")
        self._hosts_edit(add=entries)

    def _hosts_edit(self, add: list[str]) -> None:
        """Drop our tagged lines from /etc/hosts, then append `add` (in place: /etc/hosts may be a mount)."""
        text = Path("/etc/hosts").read_text()
        kept = [line for line in text.splitlines() if not line.endswith(self.tag)]
        Path("/etc/hosts").write_text("\n".join(kept + add) + "\n")

    def _start_munge(self) -> None:
        if self._munge_ok():
            return  # someone else's munged: use it, never stop it
        for d in ("/run/munge", "/var/log/munge", "/var/lib/munge"):
            os.makedirs(d, exist_ok=True)
            shutil.chown(d, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists() or key.stat().st_size == 0:
            raise RuntimeError("/etc/munge/munge.key is missing; reinstall munge (scripts/install_slurm.sh)")
        pidfile = Path("/run/munge/munged.pid")
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True)
        self.pids.append(self._read_pid(pidfile, "munged"))
        if not self._munge_ok():
            raise RuntimeError("munged started but `munge -n | unmunge` fails")

    @staticmethod
    def _munge_ok() -> bool:
        try:
            cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
            if cred.returncode != 0:
                return False
            return subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def _read_pid(self, pidfile: Path, what: str, timeout: float = 10) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if pidfile.exists() and pidfile.read_text().strip():
                return int(pidfile.read_text().split()[0])
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not start (no {pidfile}); see {self.root}/log/")

    def _start_slurmctld(self) -> None:
        self.run("slurmctld", "-f", str(self.conf))
        self.pids.append(self._read_pid(self.root / "run" / "slurmctld.pid", "slurmctld"))
        deadline = time.time() + 20
        while time.time() < deadline:
            if "is UP" in self.run("scontrol", "ping", check=False).stdout:
                return
            time.sleep(0.2)
        raise RuntimeError(f"slurmctld not answering; see {self.root}/log/slurmctld.log")

    def _start_slurmds(self) -> None:
        # Foreground (-D) children: their PIDs are known exactly (nsenter, unshare and sh exec into
        # slurmd) and we reap them on stop, so nothing depends on pid files or daemonizing.
        self.procs = []
        for i, name in enumerate(self.names, 1):
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            log = open(self.root / "log" / f"slurmd-{name}.stderr", "wb")
            if self.mode == "netns":
                # nsenter, not `ip netns exec` (see module docstring); own UTS namespace for the hostname.
                cmd = ["nsenter", f"--net=/run/netns/{self.netns[i - 1]}", "unshare", "--uts", "sh", "-c",
                       f'hostname {name} && exec slurmd -D -f "{self.conf}" -N {name}']
            else:
                cmd = ["slurmd", "-D", "-f", str(self.conf), "-N", name]
            proc = subprocess.Popen(cmd, env=self.env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
            self.procs.append(proc)
            self.pids.append(proc.pid)  # nsenter/unshare/sh exec into slurmd: same PID

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.time() + timeout
        out = ""
        while time.time() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout
            if sum(1 for line in out.splitlines() if line.split()[1:] == ["idle"]) >= self.nodes:
                return
            time.sleep(0.3)
        raise RuntimeError(f"nodes not idle after {timeout:.0f}s:\n{out}\nsee {self.root}/log/")

    # ---- jobs -----------------------------------------------------------------------------------------
    def sbatch(self, *args: str, env: dict | None = None, cwd: str | os.PathLike | None = None) -> int:
        proc = self.run("sbatch", "--parsable", *args, env=env, cwd=cwd)
        return int(proc.stdout.strip().split(";")[0].split("_")[0])

    def job(self, job_id: int | str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, ExitCode, Restarts, NodeList, ...)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", out))

    def jobs(self, job_id: int | str) -> list[dict[str, str]]:
        """All records of a job (one per array task)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout.splitlines()
        return [dict(re.findall(r"(\w+(?::\w+)?)=(\S*)", line)) for line in out if line.strip()]

    def wait(self, job_id: int | str, timeout: float = 300,
             until=lambda j: j["JobState"] not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING",
                                                   "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED")):
        """Poll every 0.5 s until `until(job)` (default: the job ended); returns the last record."""
        deadline = time.time() + timeout
        while True:
            recs = self.jobs(job_id)
            if all(until(j) for j in recs):
                return recs[0] if len(recs) == 1 else recs
            if time.time() > deadline:
                self.run("scancel", str(job_id), check=False)
                raise TimeoutError(f"job {job_id} still {[j['JobState'] for j in recs]} after {timeout:.0f}s")
            time.sleep(0.5)

    # ---- teardown -------------------------------------------------------------------------------------
    def _our_job_pids(self) -> list[int]:
        """Job processes of this cluster: step daemons and tasks (SLURM_CONF=ours and a job id in their
        environment), or anything left in our namespaces. Not slurmctld's helper (slurmscriptd): it goes
        with slurmctld."""
        mine = f"SLURM_CONF={self.conf}".encode()
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                env = (p / "environ").read_bytes().split(b"\0")
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if mine in env and (cmd.startswith(b"slurmstepd") or any(e.startswith(b"SLURM_JOB_ID=") for e in env)):
                out.append(int(p.name))
        for ns in self.netns:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            out += [int(x) for x in r.stdout.split() if x.isdigit()]
        return sorted(set(out) - set(self.pids))

    def _remove_netns(self) -> None:
        for ns in reversed(self.netns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for link in reversed(self.links):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
        self.netns, self.links = [], []

    def stop(self) -> None:
        """Cancel our jobs and stop what start() started; nothing else."""
        if not self.started:
            return
        if self.conf.exists():
            jobs = self.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False, timeout=20)
                deadline = time.time() + 20
                while time.time() < deadline and self.run("squeue", "-h", "-o", "%i", check=False,
                                                          timeout=20).stdout.split():
                    time.sleep(0.5)
        _stop_pids(self._our_job_pids())
        _stop_pids(list(reversed(self.pids)))  # slurmds, slurmctld, then munged (if ours)
        for proc in getattr(self, "procs", []):  # reap our slurmd children
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        _stop_pids(self._our_job_pids(), grace=3)  # step daemons orphaned by slurmd
        self._remove_netns()
        self._hosts_edit(add=[])
        self.pids = []
        self.started = False
