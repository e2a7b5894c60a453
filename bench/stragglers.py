"""How fast a straggler is named, against the size of its slowdown; and no false alarm on an even job.

The digits example under DDP on the CPU (2 gloo ranks, started by the daemon), rank 1
slowed by ``--delays`` milliseconds a step (the others at the same base pace), one job at
a time under one daemon: the time from the job's first training step to the ``straggler``
event, and which rank it named. Last, an even job of the same shape for as long: any
``straggler`` event there is a false alarm.

    .venv/bin/python bench/stragglers.py [--delays 20,40,80] [--window 3] [--epochs 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.jobfiles.atomic import read_json  # noqa: E402
from tests.support.harness import DaemonProc, real_env  # noqa: E402

FAULTY = "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier"
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=disabled", "data.init_args.batch_size=32",
       "supervision.standby=off", "checkpoint.every_n_train_steps=50"]


def first_step_time(d: DaemonProc, job: str) -> float | None:
    """When rank 0 finished its first training step (its heartbeat's ``first_step`` mark)."""
    beat = read_json(Path(d.status(job)["job_dir"]) / "attempts" / "1" / "heartbeat.json")
    marks = beat.get("marks") if isinstance(beat, dict) else None
    return marks.get("first_step") if isinstance(marks, dict) else None


def run(d: DaemonProc, delay_ms: int, slow_rank: int | None, args: argparse.Namespace) -> dict[str, Any]:
    extra = [f"model.init_args.delay_on_rank={slow_rank}"] if slow_rank is not None else []
    base = 0.02  # every rank's own pace, s a step
    job = d.submit(REPO / "configs/digits.yaml", *DDP, FAULTY, f"trainer.max_epochs={args.epochs}",
                   f"supervision.stragglers.window={args.window}",
                   f"model.init_args.step_delay={base + delay_ms / 1000 if slow_rank is not None else base}",
                   *extra)
    deadline = time.time() + 600
    named: list[dict[str, Any]] = []
    while time.time() < deadline:
        named = [e for e in d.client().call("events", job=job) if e["kind"] == "straggler"]
        state = d.status(job)["state"]
        if named or state in ("completed", "failed", "stopped"):
            break
        time.sleep(0.25)
    started = first_step_time(d, job)
    d.ctl("stop", job, check=False)
    d.wait_state(job, "completed", "failed", "stopped", timeout=120)
    return {"delay_ms": delay_ms, "named": [e["data"]["rank"] for e in named],
            "after_s": (named[0]["time"] - started) if named and started else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="20,40,80")
    parser.add_argument("--window", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-stragglers-") as tmp:
        state = Path(tmp) / "state"
        d = DaemonProc(state, REPO, real_env(state, OMP_NUM_THREADS="1"))
        d.start("hang.startup_allowance=240")
        try:
            rows = [run(d, int(ms), 1, args) for ms in args.delays.split(",")]
            even = run(d, 0, None, args)
        finally:
            d.kill()
            d.kill_leftovers()
    print(f"DDP, 2 gloo ranks on the CPU, base pace 20 ms a step, window {args.window} looks")
    print(f"{'rank 1 slower by':<18}{'named':>10}{'after first step':>20}")
    for r in rows:
        after = f"{r['after_s']:.1f} s" if r["after_s"] is not None else "never"
        print(f"{str(r['delay_ms']) + ' ms':<18}{','.join(map(str, r['named'])) or '-':>10}{after:>20}")
    print(f"even job: {'no event' if not even['named'] else 'FALSE ALARM on rank ' + str(even['named'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
