"""Goodput under periodic SIGKILLs: the final global step reached, against an uninterrupted run.

Every contender of ``bench/restart_compare.py`` (same model, data and checkpoint
cadence) trains for ``--duration`` seconds of wall time from its launch, its
trainer SIGKILLed every ``--kill-every`` seconds; goodput = its final global step
/ the final global step of the uninterrupted plain script in the same wall time.
ml-supervisor runs with a standby, resuming from ``last`` and from ``best``
(``val_loss``, validated once an epoch: rewinding to best gives up the steps
since the best validation at every crash). The issue's full run is
``--duration 600 --kill-every 60``. ``--hang-every 180`` adds a series where the
trainer hangs instead (SIGSTOP: alive, no progress) every 180 s: only a supervisor
that watches progress gets the run going again (ml-supervisor's default
``hang_timeout: auto``: 5x the slowest step, at least 60 s).

    .venv/bin/python bench/goodput.py [--duration 600] [--kill-every 60] [--every 10] [--hang-every 180]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restart_compare import Contender, PlainLoop, Supervised, SupervisedStandby, Torchrun, global_step, step_stamps


class SupervisedStandbyBest(SupervisedStandby):
    name = "sup standby best"
    resume_from = "best"


CONTENDERS: list[Any] = [PlainLoop, Torchrun, Supervised, SupervisedStandby, SupervisedStandbyBest]


# Seconds from each run's launch to its first optimizer step (the fixed start-up cost every run pays once).
FIRST_STEP_AFTER: dict[str, float] = {}


def run(contender: Contender, duration: float, kill_every: float | None, label: str | None = None,
        hang_every: float | None = None) -> int:
    """Start, SIGKILL the trainer every ``kill_every`` s (or SIGSTOP it, a hang, every ``hang_every`` s),
    and return the global step reached ``duration`` s after the start."""
    contender.prepare()
    start = time.time()
    contender.start()
    hung: list[int] = []
    try:
        next_kill = start + kill_every if kill_every else float("inf")
        next_hang = start + hang_every if hang_every else float("inf")
        while time.time() < start + duration:
            for due, signum in ((next_kill, signal.SIGKILL), (next_hang, signal.SIGSTOP)):
                if time.time() < due:
                    continue
                stamps = step_stamps(contender.stamps)
                if stamps:
                    try:
                        os.kill(stamps[-1][2], signum)
                        if signum == signal.SIGSTOP:
                            hung.append(stamps[-1][2])
                    except ProcessLookupError:
                        pass
                if signum == signal.SIGKILL:
                    next_kill += kill_every  # type: ignore[operator]
                else:
                    next_hang += hang_every  # type: ignore[operator]
            time.sleep(0.05)
        steps = step_stamps(contender.stamps)
        if steps:
            FIRST_STEP_AFTER[label or contender.name] = steps[0][1] - start
        return global_step(contender.stamps)
    finally:
        for pid in hung:  # a stopped process holds its signals: let it take the stop
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        contender.stop()


def load() -> str:
    """The load averages now (the box is shared: say how loaded it was over each run)."""
    one, five, _ = os.getloadavg()
    return f"(load average 1 min {one:.1f}, 5 min {five:.1f}; {time.strftime('%H:%M:%S', time.gmtime())} UTC)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--every", type=int, default=10, help="checkpoint every N steps (all contenders)")
    parser.add_argument("--step-delay", type=float, default=0.02)
    parser.add_argument("--only", action="append", choices=[c.name for c in CONTENDERS],
                        help="run only this contender besides the baseline (repeatable; default: all)")
    parser.add_argument("--hang-every", type=float, default=0.0,
                        help="also a series where the trainer hangs (SIGSTOP) every this many seconds, no kills")
    parser.add_argument("--hang-only", action="append", choices=[c.name for c in CONTENDERS],
                        help="the contenders of the hang series (repeatable; default: those of --only)")
    args = parser.parse_args()
    args.settle = 0.0
    args.accelerator = "cpu"  # restart_compare's contenders read it (its --accelerator gpu is for bench/gpu/)
    results: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-goodput-") as tmp:
        # The uninterrupted baseline runs first and last (a shared box's load drifts): the mean of the two.
        before = run(PlainLoop(Path(tmp) / "base1", args), args.duration, None, "uninterrupted (first)")
        print(f"uninterrupted (first): step {before}  {load()}", flush=True)
        for make in [c for c in CONTENDERS if not args.only or c.name in args.only]:
            contender = make(Path(tmp), args)
            results[contender.name] = run(contender, args.duration, args.kill_every)
            print(f"{contender.name}: step {results[contender.name]}  {load()}", flush=True)
        after = run(PlainLoop(Path(tmp) / "base2", args), args.duration, None, "uninterrupted (last)")
        print(f"uninterrupted (last): step {after}  {load()}", flush=True)
        # The hang series after the last baseline: what the kill series found is complete (and printed) first.
        hang_series = args.hang_only or args.only
        for make in [c for c in CONTENDERS if args.hang_every and (not hang_series or c.name in hang_series)]:
            contender = make(Path(tmp) / "hang", args)
            name = f"{contender.name}, hangs"
            results[name] = run(contender, args.duration, None, name, hang_every=args.hang_every)
            print(f"{name}: step {results[name]}  {load()}", flush=True)
        results = {"uninterrupted": round((before + after) / 2), **results}
    base = results["uninterrupted"]
    print(f"\ngoodput, {args.duration:.0f} s from launch, SIGKILL every {args.kill_every:.0f} s "
          f"(\", hangs\": instead a SIGSTOP every {args.hang_every:.0f} s), checkpoint every {args.every} steps, "
          f"digits on CPU ({os.cpu_count()} cores, shared)")
    for name, step in results.items():
        print(f"  {name:25s} final step {step:6d}  goodput {step / base:6.1%}")
    print("first optimizer step after launch (the daemon already up; ml-supervisor's includes the submit's check):")
    for name, after_s in FIRST_STEP_AFTER.items():
        print(f"  {name:22s} {after_s:5.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
