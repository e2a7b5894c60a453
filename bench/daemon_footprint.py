"""Daemon RSS and CPU while supervising N fake jobs (goal: <= 80 MB RSS, <= 0.5 % of a core at 20 jobs).

The fake trainers write heartbeats every 2 s and a checkpoint every 10 s, like
the real trainer. Baseline, in the same script: the same daemon idle with no
jobs. CPU is the daemon process's user+system time over the measuring window.

    .venv/bin/python bench/daemon_footprint.py [--jobs 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import DaemonProc, fake_env, wait_for, write_config


def sample(proc: psutil.Process, seconds: float) -> tuple[float, float]:
    """(max RSS in MB, CPU % of one core) of ``proc`` over ``seconds``."""
    before = proc.cpu_times()
    start = time.monotonic()
    rss = 0
    while time.monotonic() - start < seconds:
        rss = max(rss, proc.memory_info().rss)
        time.sleep(0.5)
    after = proc.cpu_times()
    busy = (after.user - before.user) + (after.system - before.system)
    return rss / 2**20, 100.0 * busy / (time.monotonic() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        daemon = DaemonProc(root / "state", work, fake_env(root / "state"))
        daemon.start("tick_interval=10.0")  # the default (the test harness ticks faster)
        try:
            assert daemon.proc is not None
            proc = psutil.Process(daemon.proc.pid)
            idle_rss, idle_cpu = sample(proc, min(10.0, args.seconds))
            cfg = write_config(work, steps=10**9, step_time=0.05, ckpt_every=200, heartbeat_every=2.0)
            jobs = [daemon.submit(cfg) for _ in range(args.jobs)]
            client = daemon.client()
            wait_for(lambda: all(client.call("status", job=j)["state"] == "running" for j in jobs), timeout=120,
                     interval=0.5, what="all jobs running")
            time.sleep(3)
            busy_rss, busy_cpu = sample(proc, args.seconds)
            states = {client.call("status", job=j)["state"] for j in jobs}
            for job in jobs:
                daemon.ctl("stop", job)
        finally:
            daemon.kill(signal.SIGTERM)
            daemon.kill_leftovers()
    print(f"daemon footprint over {args.seconds:.0f} s ({psutil.cpu_count()} cores)")
    print(f"  idle, no jobs (baseline)   RSS {idle_rss:6.1f} MB   CPU {idle_cpu:5.2f} % of a core")
    print(f"  {args.jobs} running fake jobs      RSS {busy_rss:6.1f} MB   CPU {busy_cpu:5.2f} % of a core"
          f"   (job states: {', '.join(sorted(states))})")
    print(f"  ratio jobs/idle: RSS {busy_rss / idle_rss:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
