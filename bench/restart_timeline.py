"""Crash -> first optimizer step of the next attempt, on the digits example, split by stage.

A real daemon runs the real trainer (`python -m trainer`) on configs/digits.yaml. After the
first attempt has saved checkpoints, the trainer is SIGKILLed; this repeats for `--kills`
attempts. For each restart the stages come from the daemon's events and the new attempt's
heartbeat marks (supervisor/jobfiles/heartbeat.py):

    detection   SIGKILL -> the daemon's restart decision
    launch      decision -> the new trainer process running (monitor spawn, interpreter start)
    imports     -> torch and Lightning imported
    setup+load  -> the resume checkpoint restored (user modules, model, data, W&B, restore)
    first step  -> the first optimizer step ended (sanity-check validation included)

Baseline, in the same script: the cold start of attempt 1 (submit's launch -> its first step).

    .venv/bin/python bench/restart_timeline.py [--kills 3]
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

from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import REPO, DaemonProc, real_env, wait_for

STAGES = ("detection", "launch", "imports", "setup+load", "first step")


def _first_step_beat(layout: JobLayout, n: int) -> Any:
    beat = read_heartbeat(layout.attempt(n).heartbeat)
    return beat if beat is not None and "first_step" in beat.marks else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        state = Path(tmp) / "state"
        daemon = DaemonProc(state, REPO, real_env(state))
        daemon.start()
        try:
            job = daemon.submit(REPO / "configs" / "digits.yaml", "trainer.max_epochs=1000",
                                "checkpoint.every_n_train_steps=10",
                                "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
                                "model.init_args.step_delay=0.01")
            client = daemon.client()
            layout = JobLayout(state / "jobs" / job)
            cold_beat = wait_for(lambda: _first_step_beat(layout, 1), timeout=300, interval=0.1)
            launch1 = next(e for e in client.call("events", job=job) if e["kind"] == "launch")
            cold = cold_beat.marks["first_step"] - launch1["time"]
            for n in range(1, args.kills + 1):
                beat = wait_for(lambda n=n: _first_step_beat(layout, n), timeout=300, interval=0.1)
                wait_for(lambda n=n: sum(e["kind"] == "checkpoint" and e["attempt"] == n
                                         for e in client.call("events", job=job)) >= 2, timeout=120, interval=0.1)
                after = client.call("events", job=job)[-1]["id"]
                killed_at = time.time()
                os.kill(beat.pid, signal.SIGKILL)
                nxt = wait_for(lambda n=n: _first_step_beat(layout, n + 1), timeout=300, interval=0.05)
                decision = next(e for e in client.call("events", job=job, after=after) if e["kind"] == "restart")
                m = nxt.marks
                rows.append({
                    "detection": decision["time"] - killed_at,
                    "launch": nxt.started_at - decision["time"],
                    "imports": m["imports_done"] - nxt.started_at,
                    "setup+load": m["checkpoint_loaded"] - m["imports_done"],
                    "first step": m["first_step"] - m["checkpoint_loaded"],
                    "total": m["first_step"] - killed_at,
                })
            daemon.ctl("stop", job)
        finally:
            daemon.kill(signal.SIGTERM)
            daemon.kill_leftovers()
    print(f"crash -> first optimizer step of the next attempt, digits example, CPU ({os.cpu_count()} cores), "
          f"median of {len(rows)} restarts")
    total = statistics.median(r["total"] for r in rows)
    for stage in (*STAGES, "total"):
        value = statistics.median(r[stage] for r in rows)
        share = "" if stage == "total" else f"  ({100 * value / total:4.1f} %)"
        print(f"  {stage:12s} {value * 1000:8.0f} ms{share}")
    print(f"  baseline: cold start of attempt 1, launch -> first step: {cold * 1000:.0f} ms "
          f"(restart total / cold start = {total / cold:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
