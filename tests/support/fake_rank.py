"""A stand-in rank for attempt-monitor tests (no torch): records its environment, then behaves as told.

    python tests/support/fake_rank.py OUT_DIR [--on-term exit|ignore|slow-exit] [--exit-after S [--code N]
                                              [--only-rank R]]

SIGUSR2 dumps its stack to its stacks file. Writes ``OUT_DIR/env.rank<R>.json``
(R from ``RANK``, 0 without one) with the launcher's variables, its pid and process group. On SIGTERM: ``exit`` writes
``term.rank<R>`` and exits 143, ``slow-exit`` does so after 1.5 s (a final save),
``ignore`` keeps running. ``--exit-after`` exits with ``--code`` after S seconds
(only rank R with ``--only-rank``; the others run until stopped).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import sys
import time
from pathlib import Path

KEYS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--on-term", choices=("exit", "ignore", "slow-exit"), default="exit")
    parser.add_argument("--exit-after", type=float, default=None)
    parser.add_argument("--code", type=int, default=0)
    parser.add_argument("--only-rank", type=int, default=None)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    if args.only_rank is not None and rank != args.only_rank:
        args.exit_after = None

    def on_term(signum: int, frame: object) -> None:
        if args.on_term == "ignore":
            return
        if args.on_term == "slow-exit":
            time.sleep(1.5)
        (args.out / f"term.rank{rank}").write_text(str(time.time()))
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    # As the trainer does: SIGUSR2 dumps the stacks into this rank's file (stacks.txt, stacks.rank1.txt, ...).
    stacks = open(args.out / ("stacks.txt" if rank == 0 else f"stacks.rank{rank}.txt"), "a", buffering=1)  # noqa: SIM115
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True)
    info = {k: os.environ.get(k) for k in KEYS} | {"pid": os.getpid(), "pgid": os.getpgid(0), "ppid": os.getppid()}
    tmp = args.out / f".env.rank{rank}.tmp"
    tmp.write_text(json.dumps(info))
    tmp.rename(args.out / f"env.rank{rank}.json")
    started = time.monotonic()
    while args.exit_after is None or time.monotonic() - started < args.exit_after:
        time.sleep(0.02)
    return args.code


if __name__ == "__main__":
    sys.exit(main())
