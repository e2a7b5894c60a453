"""A local Slurm cluster of three nodes on one machine, for the tests and for trying the Slurm backend.

Debian's ``slurm-wlm`` and ``munge``, no systemd, no accounting database: a
generated ``slurm.conf`` in a directory of its own (clients find it through
``SLURM_CONF``), ``munged`` as the ``munge`` user on a socket in that directory,
``slurmctld``, and three ``slurmd -N n1`` .. ``slurmd -N n3`` on their own ports,
all at 127.0.0.1 (``SlurmdSpoolDir`` and ``SlurmdPidFile`` carry ``%n``).
Runs as root (slurmd starts job steps as the submitting user).

    python -m tests.support.slurm_cluster start DIR     # prints: export SLURM_CONF=DIR/slurm.conf
    SLURM_CONF=DIR/slurm.conf sinfo; srun -N2 -n2 hostname
    python -m tests.support.slurm_cluster stop DIR
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

NODES = ("n1", "n2", "n3")  # three: a two-node job with one spare (restarts inside the allocation)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
MUNGE_KEY = Path("/etc/munge/munge.key")


def missing_requirements() -> str | None:
    """Why this machine cannot run the local cluster, or None when it can."""
    absent = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if absent:
        return f"Slurm/munge binaries missing ({', '.join(absent)}): apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs slurmd, which must be root"
    if not MUNGE_KEY.exists():
        return f"no munge key at {MUNGE_KEY} (apt-get install munge creates one)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (apt-get install munge creates it)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def render_slurm_conf(root: Path, munge_socket: Path, ports: list[int], *, cpus: int, min_job_age: int = 300) -> str:
    """The cluster's ``slurm.conf`` (pure): controller on ``ports[0]``, node ``n<i>`` on ``ports[i]``."""
    lines = [
        "ClusterName=mlsup",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}",
        "CredType=cred/munge",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",  # both "nodes" share this machine's cores
        "ReturnToService=1",  # a node set DOWN by hand stays down until `scontrol update ... state=resume`
        f"MinJobAge={min_job_age}",
        "KillWait=10",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "MessageTimeout=10",
        f"StateSaveLocation={root / 'ctld-state'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdSpoolDir={root / 'spool-%n'}",
        f"SlurmdPidFile={root / 'slurmd-%n.pid'}",
        f"SlurmdLogFile={root / 'slurmd-%n.log'}",
    ]
    for name, port in zip(NODES, ports[1:], strict=True):
        lines.append(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
                     f"CPUs={cpus} RealMemory=1000 State=UNKNOWN")
    lines.append(f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cluster:
    """A started local cluster: its directory and the environment its clients need."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(argv), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, check=False)


def start(root: Path, *, timeout_s: float = 60.0) -> Cluster:
    """Start munged, slurmctld and the three slurmds under ``root``; wait for every node to be idle."""
    reason = missing_requirements()
    if reason:
        raise RuntimeError(reason)
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    # munged runs as the munge user and must reach its directory: not under a root-only (0700) temp dir.
    munge_dir = Path(tempfile.mkdtemp(prefix="mlsup-munge-"))
    (root / "munge-dir").write_text(str(munge_dir))
    munge = pwd.getpwnam("munge")
    os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
    os.chmod(munge_dir, 0o755)
    Path("/run/munge").mkdir(exist_ok=True)  # munged's default paths, for a user's own clients
    (root / "ctld-state").mkdir(exist_ok=True)
    for name in NODES:
        (root / f"spool-{name}").mkdir(exist_ok=True)
    sock = munge_dir / "munge.socket"
    cluster = Cluster(root)
    ports = _free_ports(1 + len(NODES))
    cluster.conf.write_text(render_slurm_conf(root, sock, ports, cpus=max(2, os.cpu_count() or 2)))
    subprocess.run(["runuser", "-u", "munge", "--", "munged", "--force", f"--socket={sock}",
                    f"--key-file={MUNGE_KEY}", f"--pid-file={munge_dir / 'munged.pid'}",
                    f"--log-file={munge_dir / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"],
                   check=True, timeout=30)
    env = {**os.environ, **cluster.env}
    subprocess.run(["slurmctld", "-c", "-i"], env=env, check=True, timeout=30)  # -c: a clean state
    for name in NODES:
        subprocess.run(["slurmd", "-N", name], env=env, check=True, timeout=30)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = cluster.run("sinfo", "-h", "-N", "-o", "%N %t").stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        if all(states.get(n) == "idle" for n in NODES):
            return cluster
        time.sleep(0.5)
    stop(root)
    raise RuntimeError(f"the local Slurm cluster in {root} did not come up within {timeout_s:.0f}s "
                       f"(see {root}/slurmctld.log)")


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def stop(root: Path) -> None:
    """Cancel every job and stop the daemons started by ``start`` (by their pid files only)."""
    root = root.resolve()
    conf = root / "slurm.conf"
    if conf.exists():
        subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.geteuid()).pw_name],
                       env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, timeout=30, check=False)
    for name in NODES:
        _kill_pidfile(root / f"slurmd-{name}.pid")
    _kill_pidfile(root / "slurmctld.pid")
    try:
        munge_dir = Path((root / "munge-dir").read_text().strip())
    except OSError:
        return
    _kill_pidfile(munge_dir / "munged.pid")
    shutil.rmtree(munge_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``start DIR`` / ``stop DIR``."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.slurm_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            cluster = start(args.dir)
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            stop(args.dir)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"slurm_cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def fake_ranks(job: str) -> dict[int, psutil.Process]:
    """A job's live fake-trainer processes by Slurm rank (srun starts them on this machine)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if "fake_trainer" in cmd and any(job in part for part in cmd):
                found[int(proc.environ().get("SLURM_PROCID", "-1"))] = proc
        except (psutil.Error, ValueError):
            continue
    return found
