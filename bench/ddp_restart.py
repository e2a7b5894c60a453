"""2-rank DDP restart time under the real daemon: SIGKILL of rank 1 -> first optimizer step of the next attempt.

A real daemon (``ml-supervisor serve``) runs the digits example with ``trainer.devices=2``,
``trainer.strategy=ddp`` on CPU (gloo): every attempt is one attempt monitor starting two real
``python -m trainer`` ranks. Once an attempt has trained a little, rank 1 is SIGKILLed; this repeats
for ``--kills`` attempts per run. A run is one fresh daemon and job with ``supervision.standby``
``off`` (every restart cold) or ``on`` (a standby of both ranks, imports done and model built, takes
over; each kill waits for it to be ready). Runs alternate off / on for ``--rounds`` rounds, so the
load of a shared box drifts over both alike. Stages per restart, from ``monitor-exit.json``, the
daemon's events and the new attempt's heartbeat marks (the slower rank's):

    stop        SIGKILL of rank 1 -> every rank of the attempt gone (the monitor stops rank 0)
    detection   -> the daemon's restart decision (its pidfd saw the monitor exit)
    launch      decision -> both ranks' fits started (cold: monitor spawn, interpreters; standby: the handover)
    imports     -> torch and Lightning imported on both ranks (a standby did it before)
    setup+load  -> the resume checkpoint restored on both ranks (process group, model, data, restore)
    first step  -> the first optimizer step ended on both ranks

Baseline, in the same script: attempt 1's cold start (its launch event -> first step on both ranks).

    .venv/bin/python bench/ddp_restart.py [--rounds 2] [--kills 1] [--only off|on]
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start
from tests.support.harness import REPO, DaemonProc, real_env, wait_for

RANKS = 2
OVERRIDES = ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=disabled", "trainer.max_epochs=1000",
             "checkpoint.every_n_train_steps=10", "data.init_args.batch_size=32",
             "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "model.init_args.step_delay=0.01"]
MODES = ("off", "on")
STAGES = ("stop", "detection", "launch", "imports", "setup+load", "first step")
WAIT_S = 600  # two Lightning imports at once on a loaded 2-core box


def _beats(job: JobLayout, n: int, mark: str) -> list[Heartbeat] | None:
    """Both ranks' heartbeats once each has ``mark``; None before."""
    beats = [read_heartbeat(job.attempt(n).heartbeat_of(r)) for r in range(RANKS)]
    ready = [b for b in beats if b is not None and mark in b.marks]
    return ready if len(ready) == RANKS else None


def _slower(beats: list[Heartbeat], mark: str) -> float:
    return max(b.marks[mark] for b in beats)


def run(mode: str, kills: int) -> tuple[list[dict[str, float]], float]:
    """One daemon and job with ``supervision.standby=mode``: its restarts' stages and attempt 1's cold start."""
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        state = Path(tmp) / "state"
        daemon = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1"))
        daemon.start()
        try:
            job_id = daemon.submit(REPO / "configs" / "digits.yaml", *OVERRIDES, f"supervision.standby={mode}")
            client = daemon.client()
            job = JobLayout(state / "jobs" / job_id)
            first = wait_for(lambda: _beats(job, 1, "first_step"), timeout=WAIT_S, interval=0.1)
            launch1 = next(e for e in client.call("events", job=job_id) if e["kind"] == "launch")
            cold = _slower(first, "first_step") - launch1["time"]
            for n in range(1, kills + 1):
                wait_for(lambda n=n: _beats(job, n, "first_step"), timeout=WAIT_S, interval=0.1)
                wait_for(lambda: live_checkpoints(job.manifest), timeout=120, interval=0.1)
                if mode == "on":
                    wait_for(lambda: (s := daemon.status(job_id)["standby"]) and s["state"] == "ready",
                             timeout=WAIT_S, interval=0.1)
                time.sleep(1.0)  # train a little past the start
                start = read_monitor_start(job.attempt(n).monitor_start)
                assert start is not None and start.world_size == RANKS
                after = client.call("events", job=job_id)[-1]["id"]
                killed_at = time.time()
                os.kill(start.pids()[1], signal.SIGKILL)
                nxt: Any = wait_for(lambda n=n: _beats(job, n + 1, "first_step"), timeout=WAIT_S, interval=0.05)
                end = read_monitor_exit(job.attempt(n).monitor_exit)
                assert end is not None
                decision = next(e for e in client.call("events", job=job_id, after=after) if e["kind"] == "restart")
                rows.append({
                    "stop": end.ended_at - killed_at,
                    "detection": decision["time"] - end.ended_at,
                    "launch": max(b.started_at for b in nxt) - decision["time"],
                    "imports": _slower(nxt, "imports_done") - max(b.started_at for b in nxt),
                    "setup+load": _slower(nxt, "checkpoint_loaded") - _slower(nxt, "imports_done"),
                    "first step": _slower(nxt, "first_step") - _slower(nxt, "checkpoint_loaded"),
                    "total": _slower(nxt, "first_step") - killed_at,
                })
                print(f"standby {mode}, restart {n}: " + ", ".join(f"{k} {v:.2f}s" for k, v in rows[-1].items())
                      + f"  (load {_load()})", flush=True)
            daemon.ctl("stop", job_id)
        finally:
            daemon.kill(signal.SIGTERM)
            daemon.kill_leftovers()
    return rows, cold


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each mode, alternated")
    parser.add_argument("--kills", type=int, default=1, help="restarts per run")
    parser.add_argument("--only", choices=MODES, action="append", help="run only this mode (repeatable)")
    args = parser.parse_args()
    modes = args.only or list(MODES)
    rows: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
    colds: list[float] = []
    print(f"load average at start: {_load()} ({os.cpu_count()} cores)", flush=True)
    for _ in range(args.rounds):
        for mode in modes:
            found, cold = run(mode, args.kills)
            rows[mode] += found
            colds.append(cold)
    print(f"\n2-rank DDP (CPU, gloo, {os.cpu_count()} cores) under the daemon: SIGKILL of rank 1 -> first step of "
          f"the next attempt on both ranks; load average at the end: {_load()}")
    for mode in modes:
        total = statistics.median(r["total"] for r in rows[mode])
        runs = ", ".join(f"{r['total']:.2f}" for r in rows[mode])
        print(f" standby {mode}: median of {len(rows[mode])} restarts (each s: {runs})")
        for stage in (*STAGES, "total"):
            value = statistics.median(r[stage] for r in rows[mode])
            share = "" if stage == "total" else f"  ({100 * value / total:4.1f} %)"
            print(f"  {stage:12s} {value * 1000:8.0f} ms{share}")
    print(f" baseline: cold start of attempt 1, launch -> first step on both ranks: median "
          f"{statistics.median(colds) * 1000:.0f} ms over {len(colds)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
