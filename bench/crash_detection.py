"""Crash detection latency: trainer exit -> restart decision, over N kills of a fake trainer.

For each kill: SIGKILL the running trainer, then read the daemon's `restart`
event; latency = event time - kill time (same clock, same machine). Runs the
daemon twice in this script: with file events (inotify via watchdog, the
default) and, as the baseline, with file events off so only the periodic tick
notices (polling every `tick_interval`, like Supervisor's 1 s tick).

    .venv/bin/python bench/crash_detection.py [--kills 100] [--baseline-kills 20]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import DaemonProc, fake_env, wait_for, write_config


def measure(kills: int, *settings: str) -> list[float]:
    """Kill the trainer ``kills`` times; return the detection latencies in milliseconds."""
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        daemon = DaemonProc(root / "state", work, fake_env(root / "state"))
        daemon.start(*settings)
        try:
            # every attempt saves a checkpoint at once, so each restart is the immediate first of its streak
            cfg = write_config(work, steps=10**9, step_time=0.01, ckpt_every=1, heartbeat_every=2.0,
                               supervision={"max_restarts": kills + 10, "no_progress_attempts": kills + 10})
            job = daemon.submit(cfg)
            client = daemon.client()
            latencies = []
            for n in range(1, kills + 1):
                pid = wait_for(lambda n=n: _running_pid(client, job, n), timeout=30, interval=0.005)
                wait_for(lambda n=n: _saved(client, job, n), timeout=30, interval=0.005)
                after = client.call("events", job=job)[-1]["id"]
                killed_at = time.time()
                os.kill(pid, signal.SIGKILL)
                event = wait_for(lambda after=after: _restart_event(client, job, after), timeout=30, interval=0.002)
                latencies.append((event["time"] - killed_at) * 1000)
            daemon.ctl("stop", job)
            return latencies
        finally:
            daemon.kill(signal.SIGTERM)
            daemon.kill_leftovers()


def _running_pid(client, job: str, n: int) -> int | None:
    attempts = client.call("status", job=job)["attempts"]
    if len(attempts) >= n and attempts[n - 1]["pid"] and attempts[n - 1]["ended_at"] is None:
        return attempts[n - 1]["pid"]
    return None


def _saved(client, job: str, n: int) -> bool:
    return any(e["kind"] == "checkpoint" and e["attempt"] == n for e in client.call("events", job=job))


def _restart_event(client, job: str, after: int) -> dict | None:
    return next((e for e in client.call("events", job=job, after=after) if e["kind"] == "restart"), None)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--baseline-kills", type=int, default=20)
    args = parser.parse_args()
    events = measure(args.kills, "tick_interval=1.0")
    polling = measure(args.baseline_kills, "tick_interval=1.0", "watch_files=false")
    print(f"crash detection, trainer SIGKILL -> restart decision ({os.cpu_count()} cores)")
    for label, values in (("file events (default)", events), ("polling only, 1 s tick (baseline)", polling)):
        print(f"  {label:36s} n={len(values):3d}  p50 {pct(values, 0.5):7.1f} ms  p99 {pct(values, 0.99):7.1f} ms"
              f"  max {max(values):7.1f} ms  mean {statistics.mean(values):7.1f} ms")
    print(f"  ratio p50 baseline/events: {pct(polling, 0.5) / pct(events, 0.5):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
