"""Slurm restart time: a rank's death -> the next attempt's first step, inside the allocation vs a new one.

On the project's local Slurm cluster (``tests/support/slurm_cluster.py``, three nodes on this machine,
as root), a real daemon (``ml-supervisor serve``, the tests' settings: ``tick_interval=0.5``) runs a
two-node job of the fake trainer (the trainer's file contracts, no torch: what is measured is the
supervisor's and Slurm's part). Once attempt 1 has trained a little, rank 1 is SIGKILLed. Modes:

    inside   slurm.in_allocation_restarts: 3   the next attempt is a new srun step of the same job
    new      slurm.in_allocation_restarts: 0   the next attempt is a new sbatch (no queue here)

Stages, per restart:

    stop     SIGKILL of rank 1 -> the attempt's end (the step's end record / Slurm's end of the job)
    decide   -> the next attempt's launch event (the daemon saw the end; a first restart is immediate)
    start    -> the next attempt's first step (fake trainer: its first heartbeat's start + one step_time)
    total    SIGKILL -> first step

The new allocation here waits in no queue: on a real cluster add the queue wait (seconds on an idle
partition, hours on a busy one), and every rank's cold start on nodes it may not have had before.

    .venv/bin/python bench/slurm_restart.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.support.slurm_cluster import Cluster, fake_ranks, missing_requirements, start, stop

MODES = {"inside": 3, "new": 0}
STEP_TIME = 0.05
STAGES = ("stop", "decide", "start", "total")




def _events(d: DaemonProc, job: str) -> list[dict[str, Any]]:
    return d.client().call("events", job=job)


def one_restart(d: DaemonProc, cluster: Cluster, mode: str, n: int) -> dict[str, float]:
    """One job, one SIGKILL of rank 1, the stages of its restart (seconds)."""
    cfg = write_config(d.workdir, f"{mode}{n}", supervision={"backend": "slurm"},
                       steps=100000, step_time=STEP_TIME, ckpt_every=10)
    cfg.write_text(cfg.read_text() + f"slurm:\n  nodes: 2\n  ntasks_per_node: 1\n"
                   f"  in_allocation_restarts: {MODES[mode]}\n")
    job = d.submit(cfg)
    wait_for(lambda: d.status(job)["global_step"] >= 15, timeout=120, interval=0.2, what="attempt 1 training")
    ranks = wait_for(lambda: (r := fake_ranks(job)) and len(r) == 2 and r, timeout=30, what="both ranks")
    layout = JobLayout(Path(d.status(job)["job_dir"]))
    killed_at = time.time()
    ranks[1].send_signal(signal.SIGKILL)
    beat = wait_for(lambda: read_heartbeat(layout.attempt(2).heartbeat), timeout=120, interval=0.02,
                    what="attempt 2's first heartbeat")
    first_step = beat.started_at + STEP_TIME  # the fake's first step: one step_time after its loop starts
    st = d.status(job)
    same = st["attempts"][1]["slurm_job_id"] == st["attempts"][0]["slurm_job_id"]
    assert same == (mode == "inside"), st["attempts"]
    return restart_stages(d, cluster, job, layout, killed_at, first_step)


def restart_stages(d: DaemonProc, cluster: Cluster, job: str, layout: JobLayout, killed_at: float,
                   first_step: float) -> dict[str, float]:
    """Stop ``job`` once attempt 2 stepped; the stages from the kill to that step (seconds): the rank's step
    ending, the daemon's decision and launch, the start to the first step, in all."""
    events = _events(d, job)
    ended = next(e for e in events if e["kind"] == "attempt_ended" and e["attempt"] == 1)
    launch = next(e for e in events if e["kind"] == "launch" and e["attempt"] == 2)
    end_record = read_json(layout.attempt(1).dir / "slurm-end.json") or {}
    ended_at = float(end_record.get("ended_at") or ended["time"])
    d.ctl("stop", job)
    d.wait_state(job, "stopped", "failed", "completed", timeout=120)
    wait_for(lambda: not cluster.run("squeue", "-h", f"--name=mlsup-{job}").stdout.strip(), timeout=60,
             what="the job's allocation gone")
    return {"stop": ended_at - killed_at, "decide": launch["time"] - ended_at, "start": first_step - launch["time"],
            "total": first_step - killed_at}


def main() -> int:
    """Alternate the two modes for ``--rounds`` rounds on a fresh local cluster; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        print(f"slurm_restart: no local Slurm cluster: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mlsup-slurm-bench-") as tmp:
        root = Path(tmp)
        cluster = start(root / "slurm")
        state, work = root / "state", root / "work"
        work.mkdir()
        d = DaemonProc(state, work, fake_env(state, **cluster.env))
        d.start()
        try:
            results = alternate(args.rounds, list(MODES), lambda mode, n: one_restart(d, cluster, mode, n))
        finally:
            d.kill(signal.SIGTERM)
            d.kill_leftovers()
            stop(root / "slurm")
    print_medians(results, args.rounds, "SIGKILL of rank 1 -> first step of attempt 2")
    return 0


def alternate(rounds: int, modes: Sequence[str],
              restart: Callable[[str, int], dict[str, float]]) -> dict[str, list[dict[str, float]]]:
    """``restart(mode, round)`` for each mode in turn, ``rounds`` times; each mode's stages, printed as they come."""
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    for n in range(rounds):
        for mode in modes:
            got = restart(mode, n)
            results[mode].append(got)
            print(f"round {n + 1} {mode:8s} " + "  ".join(f"{k} {v:6.2f}s" for k, v in got.items()), flush=True)
    return results


def print_medians(results: Mapping[str, list[dict[str, float]]], rounds: int, what: str) -> None:
    """Each mode's median stages and the range of its totals."""
    print(f"\nmedians over {rounds} rounds (seconds; {what}):")
    print(f"{'mode':9s}" + "".join(f"{s:>9s}" for s in STAGES) + "   total range")
    for mode, rows in results.items():
        totals = [r["total"] for r in rows]
        print(f"{mode:9s}" + "".join(f"{statistics.median(r[s] for r in rows):9.2f}" for s in STAGES)
              + f"   {min(totals):.2f}-{max(totals):.2f}")


if __name__ == "__main__":
    sys.exit(main())
