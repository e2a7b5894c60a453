"""The chaos soak: hundreds of injected faults of every kind under a live daemon, and the invariants.

Every job carries faults of one kind (trainer SIGKILL, exception, daemon SIGKILL + restart,
reboot, hang, corrupted newest checkpoint, disk full during a save, fatal Xid, lost GPU,
SIGKILL of one rank of a 2-rank DDP job) injected at random steps from ``--seed``;
``--concurrency`` jobs run at once so faults meet each other. ``--faults-per-job K``: a
job of a repeatable kind takes K injections in sequence, each armed once the previous
restart was seen (exception, hang and disk_full stay one per job). After every restart
and at each job's end: no job lost or stuck, never two attempts of a job alive nor two
processes of one rank (sampled every 0.1 s), no process left behind (nor a rank outliving
its killed sibling's attempt), the target step reached, budget overrun <= 15 s, every
restart from a verifying checkpoint the policy names, one alert per restart
(tests/support/chaos_checks.py). Prints the table kind x injections x violations with
restart-time percentiles, where the soak's time went, and each violating job's history.

    .venv/bin/python bench/chaos_soak.py --seed 1 --injections-per-kind 200 --real 20 \
        --concurrency 8 --faults-per-job 4 --parallel

``--real N``: N more injections of each kind on real Lightning jobs (the digits example,
CPU; rank_kill as 2 gloo ranks), under a second daemon (the trainer module is a daemon
setting); ``--parallel`` runs both soaks at once. ``--minutes M`` stops planning new jobs
after M minutes (the table then says how far it got). Each landed injection counts once
for its kind (a daemon kill or reboot hits every running job, and counts once).
Exits 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.chaos import Soak, SoakResult, merge, summary
from tests.support.chaos_faults import KINDS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--injections-per-kind", type=int, default=200)
    parser.add_argument("--real", type=int, default=0, help="injections of each kind on real Lightning jobs")
    parser.add_argument("--concurrency", type=int, default=3, help="fake-trainer jobs at once")
    parser.add_argument("--real-concurrency", type=int, default=2, help="real Lightning jobs at once")
    parser.add_argument("--faults-per-job", type=int, default=1,
                        help="injections a job of a repeatable kind takes in sequence (each followed by its checks)")
    parser.add_argument("--minutes", type=float, default=None, help="stop submitting new jobs after this")
    parser.add_argument("--parallel", action="store_true",
                        help="run the fake-trainer and the real-Lightning soaks at once (two daemons), not in turn")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    # a SIGTERM (timeout, Ctrl-C's sibling) unwinds like Ctrl-C: each soak kills its daemon and trainers
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    # ignore_cleanup_errors: a trainer's last write racing the removal must not cost the table
    with tempfile.TemporaryDirectory(prefix="chaos-soak-", ignore_cleanup_errors=True) as tmp:
        soaks = []
        for real, per_kind in ((False, args.injections_per_kind), (True, args.real)):
            if per_kind <= 0:
                continue
            soak = Soak(Path(tmp) / ("real" if real else "fake"), seed=args.seed, per_kind=per_kind, real=real,
                        concurrency=args.real_concurrency if real else args.concurrency, kinds=kinds,
                        faults_per_job=args.faults_per_job, log=lambda line: print(line, flush=True))
            soak.deadline = deadline
            print(f"{'real Lightning' if real else 'fake trainer'}: {len(soak.plan)} jobs", flush=True)
            soaks.append(soak)
        results = _run_parallel(soaks) if args.parallel else [soak.run() for soak in soaks]
    result = merge(results)
    if args.parallel and results:
        result.wall_s = max(r.wall_s for r in results)  # side by side: the longer one, not the sum
    print(summary(result))
    for kind, why in result.skipped.items():  # in the table too; said again where a reader of the tail sees it
        print(f"NOT RUN: {kind}: {why}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result.__dict__, default=str, indent=1))
    return 1 if result.total_violations() else 0


def _run_parallel(soaks: list[Soak]) -> list[SoakResult]:
    """Each soak in a thread of its own (they share nothing but the box); Ctrl-C/SIGTERM aborts them all."""
    results: dict[int, SoakResult] = {}
    threads = [threading.Thread(target=lambda i=i, s=s: results.__setitem__(i, s.run()), name=f"soak-{i}")
               for i, s in enumerate(soaks)]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=1.0)  # a short join: the main thread must stay able to take the signal
    except KeyboardInterrupt:
        for soak in soaks:
            soak.abort.set()  # each loop stops and cleans up (daemon, trainers, mounts) in its own thread
        for thread in threads:
            thread.join(timeout=120)
        print("ABORTED: the table counts what was injected so far; the jobs running then had no final checks",
              flush=True)
    return [results[i] for i in sorted(results)]


if __name__ == "__main__":
    sys.exit(main())
