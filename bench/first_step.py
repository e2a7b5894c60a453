"""Launch -> first optimizer step of a new run: the plain script against ml-supervisor's submit.

The same digits job as ``bench/restart_compare.py``. The plain script's clock
starts when it is launched; ml-supervisor's when ``supervisorctl submit``
starts (the daemon is already up, as under systemd), so it includes the
submit's import check: with the standby off, attempt 1 starts cold after it;
with it on, attempt 1 starts as a standby beside the check and is promoted at
the launch. Contenders alternate, ``--rounds`` each.

    .venv/bin/python bench/first_step.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from restart_compare import PlainLoop, Supervised, SupervisedStandby, step_stamps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    args.every, args.step_delay, args.settle, args.accelerator = 10, 0.02, 0.0, "cpu"
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-first-step-") as tmp:
        for r in range(args.rounds):
            for make in (PlainLoop, Supervised, SupervisedStandby):
                contender = make(Path(tmp) / f"round{r}", args)
                contender.prepare()
                start = time.time()
                contender.start()
                try:
                    while not (steps := step_stamps(contender.stamps)):
                        time.sleep(0.02)
                finally:
                    contender.stop()
                times.setdefault(contender.name, []).append(steps[0][1] - start)
                print(f"round {r + 1}: {contender.name:12s} first step {times[contender.name][-1]:6.2f} s", flush=True)
    base = statistics.median(times[PlainLoop.name])
    print(f"\nlaunch (or submit) -> first optimizer step, digits on CPU, median of {args.rounds}")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"  {name:12s} {median:6.2f} s  ({median / base:.2f}x the plain script)  runs: "
              + " ".join(f"{t:.2f}" for t in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
