"""Crash detection latency: trainer exit -> restart decision, over N kills of a fake trainer.

For each kill: SIGKILL the running trainer, then read the daemon's `restart`
event; latency = event time - kill time (same clock, same machine). Runs the
daemon twice in this script: with file events (inotify via watchdog, the
default) and, as the baseline, with file events off so only the periodic tick
notices (polling every `tick_interval`, like Supervisor's 1 s tick).

Robust on a loaded machine: whether an attempt saved is read from the job's
manifest (not from the events list, which is paged: with a checkpoint every
step, an attempt's saves can lie past the first page), events are read with a
cursor, and the waits are generous (they bound a stuck run, not the figures).

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

from supervisor.jobfiles.atomic import read_json_lines
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

WAIT_S = 120.0  # a loaded machine can take many seconds to start a Python trainer


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
            manifest = root / "state" / "jobs" / job / "checkpoints" / "manifest.jsonl"
            latencies = []
            for n in range(1, kills + 1):
                pid = wait_for(lambda n=n: _running_pid(client, job, n), timeout=WAIT_S, interval=0.005,
                               what=f"attempt {n} running")
                wait_for(lambda n=n: _saved(manifest, n), timeout=WAIT_S, interval=0.005,
                         what=f"a checkpoint of attempt {n}")
                after = _last_event_id(client, job)
                killed_at = time.time()
                os.kill(pid, signal.SIGKILL)
                event = wait_for(lambda after=after: _restart_event(client, job, after), timeout=WAIT_S,
                                 interval=0.002, what=f"the restart after killing attempt {n}")
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


def _saved(manifest: Path, n: int) -> bool:
    return any(e.get("event") == "save" and e.get("attempt") == n for e in read_json_lines(manifest))


def _last_event_id(client, job: str) -> int:
    """The id of the job's newest event (events come in pages of at most 1000)."""
    last = 0
    while page := client.call("events", job=job, after=last):
        last = page[-1]["id"]
    return last


def _restart_event(client, job: str, after: int) -> dict | None:
    while page := client.call("events", job=job, after=after):
        found = next((e for e in page if e["kind"] == "restart"), None)
        if found is not None:
            return found
        after = page[-1]["id"]
    return None


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
