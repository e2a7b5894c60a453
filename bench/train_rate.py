"""The running trainer's steps per second, window by window, beside its standby's state.

What a standby costs the attempt it backs up: the same digits job as
``bench/restart_compare.py`` (ml-supervisor, standby on, or the plain script),
its global step read every ``--window`` seconds and printed as a rate, with the
standby's state (preparing, ready) from ``status``. ``--kill-at S`` SIGKILLs the
trainer S seconds after the launch (and every ``--kill-every`` seconds after), to
see the takeover and the next standby's preparation in the same series.

    .venv/bin/python bench/train_rate.py [--contender "sup standby"] [--duration 60] [--kill-at 0]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restart_compare import PlainLoop, Supervised, SupervisedStandby, global_step, step_stamps

CONTENDERS = {c.name: c for c in (PlainLoop, Supervised, SupervisedStandby)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", choices=sorted(CONTENDERS), default="sup standby")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds after the first step")
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--kill-at", type=float, default=0.0, help="SIGKILL the trainer this long after launch")
    parser.add_argument("--kill-every", type=float, default=0.0, help="and again every this many seconds after")
    parser.add_argument("--every", type=int, default=10, help="checkpoint every N steps")
    parser.add_argument("--step-delay", type=float, default=0.02)
    args = parser.parse_args()
    args.settle, args.accelerator = 0.0, "cpu"
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp:
        contender = CONTENDERS[args.contender](Path(tmp), args)
        contender.prepare()
        start = time.time()
        contender.start()
        try:
            while global_step(contender.stamps) == 0:
                time.sleep(0.05)
            print(f"+{time.time() - start:5.1f} s  first step", flush=True)
            then, step = time.time(), global_step(contender.stamps)
            next_kill = start + args.kill_at if args.kill_at else float("inf")
            end = then + args.duration
            while time.time() < end:
                time.sleep(args.window)
                now, now_step = time.time(), global_step(contender.stamps)
                daemon = getattr(contender, "daemon", None)
                standby = daemon.status(contender.job)["standby"] if daemon is not None else None
                print(f"+{now - start:5.1f} s  {(now_step - step) / (now - then):5.1f} steps/s  step {now_step:6d}  "
                      f"standby {standby['state'] if standby else '-':9s}  load {os.getloadavg()[0]:.1f}", flush=True)
                then, step = now, now_step
                if now >= next_kill:
                    pid = step_stamps(contender.stamps)[-1][2]
                    os.kill(pid, signal.SIGKILL)
                    next_kill = next_kill + args.kill_every if args.kill_every else float("inf")
                    print(f"+{time.time() - start:5.1f} s  SIGKILL {pid}", flush=True)
        finally:
            contender.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
