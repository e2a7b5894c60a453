"""A SIGKILL before the job's next standby is ready: the cold path against a bash ``until`` loop, side by side.

A sibling of ``bench/restart_compare.py`` (its contenders, model, cadence and first-step
stamps). The fault is placed 2 s after the first checkpoint of the run, when attempt 1
(promoted from the submit's standby) trains and the job's zygote is still importing
beside it, so ml-supervisor restarts cold:

    loop          ``until python train.py; do :; done``
    sup early     ml-supervisor, ``standby: on``: the kill comes before the next standby is ready
    sup cold      ml-supervisor, ``standby: off`` (no zygote importing beside the restart)

For ml-supervisor the restart is split as ``bench/restart_timeline.py`` splits it: detection
(the kill to the daemon's restart decision), zygote (a restart that waits for the job's
importing zygote: to its forked standby's ready file), launch (to the new trainer's start, or
the handover), imports, setup + load, first step. Rounds alternate the contenders (the order
rotated each round).

    .venv/bin/python bench/cold_restart.py [--rounds 3] [--after-checkpoint 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restart_compare import WAIT_S, PlainLoop, SupervisedStandby, step_stamps

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.standbyfiles import ready_file_name
from tests.support.harness import wait_for

STAGES = ("detection", "zygote", "launch", "imports", "setup+load", "first step")


def early_ready(contender: Any) -> None:
    """Wait for the first step and the first checkpoint after it, then ``--after-checkpoint`` seconds."""
    stamps = wait_for(lambda: step_stamps(contender.stamps) or None, timeout=WAIT_S, interval=0.05,
                      what=f"{contender.name}: first step")
    contender.pid, first = stamps[-1][2], stamps[-1][1]
    ckpt = wait_for(lambda: next((p for p in contender.root.rglob("last.ckpt") if p.stat().st_mtime > first), None),
                    timeout=WAIT_S, interval=0.02, what=f"{contender.name}: the first checkpoint")
    time.sleep(max(0.0, ckpt.stat().st_mtime + contender.args.after_checkpoint - time.time()))


class Loop(PlainLoop):
    def ready_for_fault(self) -> None:
        early_ready(self)


class SupEarly(SupervisedStandby):
    name = "sup early"

    def ready_for_fault(self) -> None:
        early_ready(self)
        self.standby_at_kill = (self.daemon.status(self.job).get("standby") or {}).get("state")
        self.after = self.daemon.client().call("events", job=self.job)[-1]["id"]

    def stages(self, killed_at: float) -> dict[str, float]:
        """The restart split by stage (attempt 2's heartbeat marks and the daemon's restart decision)."""
        beat = read_heartbeat(JobLayout(self.daemon.state_dir / "jobs" / self.job).attempt(2).heartbeat)
        assert beat is not None and "first_step" in beat.marks
        decision = next(e for e in self.daemon.client().call("events", job=self.job, after=self.after)
                        if e["kind"] == "restart")
        m = beat.marks
        # A restart that waited for the job's zygote: its remaining imports and the forked standby's build, to
        # the standby's ready file; the handover follows at once (so ``imports`` is nothing).
        ready = read_json(JobLayout(self.daemon.state_dir / "jobs" / self.job).attempt(2).dir / ready_file_name(0, 1))
        ready_at = float(ready["ready_at"]) if isinstance(ready, dict) and "ready_at" in ready else decision["time"]
        return {"detection": decision["time"] - killed_at, "zygote": ready_at - decision["time"],
                "launch": beat.started_at - ready_at,
                "imports": m["imports_done"] - beat.started_at,
                "setup+load": m["checkpoint_loaded"] - m["imports_done"],
                "first step": m["first_step"] - m["checkpoint_loaded"]}


class SupCold(SupEarly):
    name = "sup cold"
    standby = "off"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--after-checkpoint", type=float, default=2.0, help="seconds from the first checkpoint")
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--step-delay", type=float, default=0.02)
    args = parser.parse_args()
    args.settle, args.accelerator = 0.0, "cpu"
    makes = [Loop, SupEarly, SupCold]
    totals: dict[str, list[float]] = {}
    split: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        for r in range(args.rounds):
            for make in makes[r % 3:] + makes[:r % 3]:
                contender = make(Path(tmp), args)
                contender.prepare()
                contender.start()
                try:
                    seconds = contender.fault("sigkill")
                    totals.setdefault(contender.name, []).append(seconds)
                    extra = ""
                    if isinstance(contender, SupEarly):
                        row = contender.stages(_kill_time(contender, seconds))
                        split.setdefault(contender.name, []).append(row)
                        extra = f"  standby at the kill: {contender.standby_at_kill}  " + "  ".join(
                            f"{k} {v:.2f}" for k, v in row.items())
                    one, five, _ = os.getloadavg()
                    print(f"round {r + 1}: {contender.name:10s} {seconds:6.2f} s{extra}  (load {one:.1f} / {five:.1f})",
                          flush=True)
                finally:
                    contender.stop()
    base = statistics.median(totals["loop"])
    print(f"\nSIGKILL {args.after_checkpoint:.0f} s after the first checkpoint -> the successor's first step, "
          f"digits on CPU ({os.cpu_count()} cores, shared), {args.rounds} round(s), "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    for name, values in totals.items():
        med = statistics.median(values)
        print(f"  {name:10s} median {med:5.2f} s ({med / base:4.2f}x the loop)  runs: "
              f"{', '.join(f'{v:.2f}' for v in values)}")
        if name in split:
            print("    " + "  ".join(f"{s} {statistics.median(row[s] for row in split[name]):.2f}" for s in STAGES))
    return 0


def _kill_time(contender: Any, seconds: float) -> float:
    """When the kill was sent: the successor's first step minus the measured restart."""
    stamps = step_stamps(contender.stamps)
    return stamps[-1][1] - seconds


if __name__ == "__main__":
    sys.exit(main())
