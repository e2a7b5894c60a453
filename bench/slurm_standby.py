"""Slurm restarts with real Lightning: inside the allocation cold, inside with a standby per node, a new allocation.

On the project's local Slurm cluster (``tests/support/slurm_cluster.py``, three nodes on this machine,
as root), a real daemon (``ml-supervisor serve``, ``tick_interval=0.5`` as in the tests) runs the digits
example (``configs/digits.yaml``, real ``python -m trainer``: torch and Lightning imports, model and data
build) as DDP over gloo, one rank on each of two nodes. Once attempt 1 has saved two checkpoints (and, in
``standby`` mode, attempt 2's standby step is ready on both nodes), rank 1 is SIGKILLed. Contenders:

    cold      in_allocation_restarts: 3, supervision.standby: off   a new srun step, ranks start cold
    standby   in_allocation_restarts: 3, supervision.standby: on    the standby step's ranks take the step
    new       in_allocation_restarts: 0, supervision.standby: off   a new sbatch (no queue here)

Stages, per restart:

    stop     SIGKILL of rank 1 -> the attempt's end (its end record)
    decide   -> the next attempt's launch event (the daemon saw the end; a first restart is immediate)
    start    -> the next attempt's first training step on every rank (the heartbeats' ``first_step`` marks)
    total    SIGKILL -> first step

The new allocation waits in no queue here: on a real cluster add the queue wait.

    .venv/bin/python bench/slurm_standby.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.slurm_restart import alternate, print_medians, restart_stages
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import REPO, DaemonProc, real_env, wait_for
from tests.support.slurm_cluster import Cluster, missing_requirements, start, stop

DIGITS = REPO / "configs" / "digits.yaml"
JOB = ["supervision.backend=slurm", "slurm.nodes=2", "slurm.ntasks_per_node=1", "trainer.max_epochs=20",
       "checkpoint.every_n_train_steps=5", "logger.wandb.mode=disabled",
       "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "model.init_args.step_delay=0.1",
       "+env.MASTER_ADDR=127.0.0.1"]  # the local cluster's node names are not host names
MODES = {"cold": ("3", "off"), "standby": ("3", "on"), "new": ("0", "off")}


def _trainers(job: str, standby: bool) -> dict[int, Any]:
    import psutil

    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if len(cmd) > 2 and cmd[1:3] == ["-m", "trainer"] and any(job in c for c in cmd) \
                    and ("--standby" in cmd) == standby:
                found[int(proc.environ().get("SLURM_PROCID", "-1"))] = proc
        except (psutil.Error, ValueError):
            continue
    return found


def _first_step(layout: JobLayout, n: int) -> float | None:
    """When the last of attempt ``n``'s two ranks made its first training step (None: not yet both)."""
    marks = []
    for rank in (0, 1):
        beat = read_heartbeat(layout.attempt(n).heartbeat_of(rank))
        if beat is None or "first_step" not in beat.marks:
            return None
        marks.append(beat.marks["first_step"])
    return max(marks)


def one_restart(d: DaemonProc, cluster: Cluster, mode: str) -> dict[str, float]:
    """One job, one SIGKILL of rank 1, the stages of its restart (seconds)."""
    restarts, standby = MODES[mode]
    job = d.submit(DIGITS, *JOB, f"slurm.in_allocation_restarts={restarts}", f"supervision.standby={standby}")
    layout = JobLayout(d.state_dir / "jobs" / job)

    def saved_twice() -> bool:
        return sum(1 for e in d.client().call("events", job=job)
                   if e["kind"] == "checkpoint" and e["attempt"] == 1) >= 2

    wait_for(saved_twice, timeout=300, interval=0.3, what="attempt 1 to save two checkpoints")
    if standby == "on":
        wait_for(lambda: all((layout.attempt(2).dir / f"standby-ready.rank{r}.json").exists() for r in (0, 1)),
                 timeout=300, interval=0.3, what="the standby step ready on both nodes")
    else:
        time.sleep(3.0)  # the same settling as the standby's wait leaves, roughly: the box idle but for training
    ranks = wait_for(lambda: (r := _trainers(job, standby=False)) and len(r) == 2 and r, timeout=30,
                     what="both training ranks")
    killed_at = time.time()
    ranks[1].send_signal(signal.SIGKILL)
    first_step = wait_for(lambda: _first_step(layout, 2), timeout=300, interval=0.05,
                          what="attempt 2's first step on both ranks")
    second = d.status(job)["attempts"][1]
    assert (second["slurm_job_id"] == d.status(job)["attempts"][0]["slurm_job_id"]) == (mode != "new"), second
    assert bool(second.get("standby")) == (mode == "standby"), second
    return restart_stages(d, cluster, job, layout, killed_at, first_step)


def main() -> int:
    """Alternate the three contenders for ``--rounds`` rounds on a fresh local cluster; print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        print(f"slurm_standby: no local Slurm cluster: {reason}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="mlsup-slurm-standby-") as tmp:
        root = Path(tmp)
        cluster = start(root / "slurm")
        d = DaemonProc(root / "state", REPO, real_env(root / "state", **cluster.env))
        d.start("hang.startup_allowance=300")
        try:
            results = alternate(args.rounds, list(MODES), lambda mode, _: one_restart(d, cluster, mode))
        finally:
            d.kill(signal.SIGTERM)
            d.kill_leftovers()
            stop(root / "slurm")
    print_medians(results, args.rounds, "SIGKILL of rank 1 -> first step of attempt 2 on both ranks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
