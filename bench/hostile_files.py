"""Before/after figures for hostile trainer files (issue 33): a victim job's heartbeat replaced under a real daemon.

A daemon (fake trainer, ``tick_interval=0.5``) runs two jobs; the victim's trainer stops writing at step 15
and its ``heartbeat.json`` becomes a FIFO, a sparse file of ``--size-gb`` GB, or a FUSE mount that never
answers over its whole attempt dir (``stall``: root and /dev/fuse only). For 8 s: ``status`` of the other
job every 0.2 s and the daemon's RSS; then ``status`` of the victim, and the time from a SIGKILL of the
other job's trainer to its attempt 2 running. One JSON line.

    .venv/bin/python bench/hostile_files.py --kind fifo
    .venv/bin/python bench/hostile_files.py --kind sparse --size-gb 50
    .venv/bin/python bench/hostile_files.py --kind stall

``--tree DIR`` runs another checkout's daemon (e.g. ``git archive`` of an older commit unpacked in DIR), with
this checkout's harness. Never give an old tree a sparse file larger than the machine's memory: it reads
the file whole.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]


def measure(kind: str, size_gb: float, tree: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import psutil

    from supervisor.api.client import Client
    from supervisor.errors import DaemonUnavailable
    from tests.support.harness import SUPPORT, DaemonProc, fake_env, wait_for, write_config
    from tests.support.stalling_fs import StallingFs

    base = Path(tempfile.mkdtemp(prefix="hostile-files-", dir="/tmp"))
    state, work = base / "state", base / "work"
    work.mkdir()
    env = fake_env(state, PYTHONPATH=os.pathsep.join([str(SUPPORT), str(tree)]))
    d = DaemonProc(state, work, env)
    d.start()
    stalled: StallingFs | None = None
    try:
        assert d.proc is not None
        other = d.submit(write_config(work, "other", steps=100_000, step_time=0.02, ckpt_every=20))
        victim = d.submit(write_config(work, "victim", steps=1000, step_time=0.02, ckpt_every=5, hang_at=15))
        d.live_pid(victim, 1)
        wait_for(lambda: d.status(victim)["global_step"] >= 10, what="the victim's progress")
        time.sleep(0.3)
        beat = Path(d.status(victim)["job_dir"]) / "attempts" / "1" / "heartbeat.json"
        rss_before = psutil.Process(d.proc.pid).memory_info().rss / 2**20
        if kind == "stall":
            stalled = StallingFs(beat.parent).__enter__()
        else:
            beat.unlink()
            if kind == "fifo":
                os.mkfifo(beat)
            else:
                with open(beat, "wb") as f:
                    f.truncate(int(size_gb * 2**30))
        client = Client(state, timeout=10)
        latencies, peak, until = [], rss_before, time.monotonic() + 8
        while time.monotonic() < until:
            start = time.monotonic()
            try:
                client.call("status", job=other)
                latencies.append(time.monotonic() - start)
            except DaemonUnavailable:
                latencies.append(float("inf"))
            peak = max(peak, psutil.Process(d.proc.pid).memory_info().rss / 2**20)
            time.sleep(0.2)
        latencies.sort()
        start = time.monotonic()
        try:
            client.call("status", job=victim)
            victim_status: Any = round(time.monotonic() - start, 3)
        except DaemonUnavailable:
            victim_status = "no answer in 10 s"
        pid = d.live_pid(other, 1)
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        try:
            d.live_pid(other, 2, timeout=20)
            restart: Any = round(time.monotonic() - killed, 2)
        except AssertionError:
            restart = "not restarted in 20 s"
        return {"tree": str(tree), "kind": kind, "size_gb": size_gb if kind == "sparse" else None,
                "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(peak, 1),
                "status_other_p50_s": round(latencies[len(latencies) // 2], 4),
                "status_other_max_s": round(latencies[-1], 4), "status_victim_s": victim_status,
                "other_restart_s": restart, "load_average": round(os.getloadavg()[0], 2)}
    finally:
        if stalled is not None:
            stalled.close()
        if d.proc is not None:
            d.kill(signal.SIGKILL)
        d.kill_leftovers()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("fifo", "sparse", "stall"), required=True)
    parser.add_argument("--size-gb", type=float, default=50.0)
    parser.add_argument("--tree", type=Path, default=HERE, help="the checkout whose daemon runs (default: this one)")
    args = parser.parse_args()
    print(json.dumps(measure(args.kind, args.size_gb, args.tree.resolve())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
