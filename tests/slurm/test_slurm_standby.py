"""A standby per node on the local Slurm cluster: the next step's ranks are prepared trainers (real Lightning).

Attempt 1 runs as step 1 of a held allocation on two nodes (one gloo rank each); once it
steps, the daemon asks the batch script for attempt 2's standby step (``srun --overlap``,
``--standby``). A rank's SIGKILL ends step 1; attempt 2 is handed to the standby step's
ranks, which were waiting with their imports done and their model built.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
import pytest

from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from tests.slurm.test_slurm_lightning import DIGITS, TWO_NODES, lightning_daemon  # noqa: F401
from tests.support.harness import DaemonProc, wait_for
from tests.support.slurm_cluster import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.lightning]


def _trainers(job: str, standby: bool | None) -> dict[int, psutil.Process]:
    """The job's ``python -m trainer`` processes by rank: the training ones, the standbys, or (None) all."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if len(cmd) > 2 and cmd[1:3] == ["-m", "trainer"] and any(job in c for c in cmd) \
                    and (standby is None or ("--standby" in cmd) == standby):
                found[int(proc.environ().get("SLURM_PROCID", "-1")) + (100 * len(found) if standby is None else 0)] \
                    = proc
        except (psutil.Error, ValueError):
            continue
    return found


def _standby_ready(attempt_dir: Path) -> bool:
    return all((attempt_dir / f"standby-ready.rank{r}.json").exists() for r in (0, 1))


def _to_first_step(attempt_dir: Path) -> float:
    """Seconds from the step's start (the batch script's record) to rank 0's first training step."""
    started = json.loads((attempt_dir / "slurm-step.json").read_text())["started_at"]
    beat = read_heartbeat(attempt_dir / "heartbeat.json")
    assert beat is not None and "first_step" in beat.marks, beat
    return beat.marks["first_step"] - float(started)


def test_the_next_step_takes_over_the_standby_step_of_every_node(lightning_daemon: DaemonProc,  # noqa: F811
                                                                  slurm_cluster: Cluster) -> None:
    d = lightning_daemon
    # Attempt 1 slow (1 s a step, 92 s in all) so it is still training when the standby is ready on a loaded
    # box (at 0.2 s a step it once completed first); attempt 2 runs at full speed.
    job = d.submit(DIGITS, *TWO_NODES, "supervision.standby=on", "model.init_args.step_delay=1.0",
                   "model.init_args.delay_on_attempt=1")
    layout = JobLayout(d.state_dir / "jobs" / job)
    wait_for(lambda: _standby_ready(layout.attempt(2).dir), timeout=240, interval=0.3,
             what="attempt 2's standby step to be ready on both nodes")
    standby_step = json.loads((layout.attempt(2).dir / "slurm-standby.json").read_text())["slurm_step_id"]
    training = _trainers(job, standby=False)
    assert sorted(training) == [0, 1] and sorted(_trainers(job, standby=True)) == [0, 1], training
    training[1].send_signal(signal.SIGKILL)  # srun --kill-on-bad-exit ends step 1; the allocation stays
    final = d.wait_state(job, "completed", "failed", timeout=300)
    assert final["state"] == "completed", final["attempts"]
    first, second = final["attempts"][:2]
    assert first["reason"] == "crash" and second["slurm_job_id"] == first["slurm_job_id"]
    # attempt 2 ran on the standby's step: the ranks that were waiting, no new srun
    assert second["slurm_step_id"] == standby_step and second["standby"] is True, second
    attempt2 = layout.attempt(2)
    handover = json.loads((attempt2.dir / "handover.json").read_text())
    assert handover["argv"][handover["argv"].index("--ckpt") + 1] == second["resumed_from"]  # the policy's choice
    records = [read_exit_record(attempt2.exit_record), read_exit_record(attempt2.exit_record_of(1))]
    assert [r.status if r else None for r in records] == ["completed", "completed"]
    cold, warm = _to_first_step(layout.attempt(1).dir), _to_first_step(attempt2.dir)
    print(f"step start -> first training step: cold {cold:.2f} s, standby {warm:.2f} s")
    assert warm < (cold - 1.0) / 3, (cold, warm)  # imports and model build were done before the step began
    # (cold's first step includes attempt 1's 1 s step delay, taken off)
    # nothing outlives the job: the allocation is given back, no standby or trainer process of it remains
    wait_for(lambda: not slurm_cluster.run("squeue", "-h", f"--name=mlsup-{job}").stdout.strip(), timeout=30,
             what="the allocation to end")
    wait_for(lambda: not _trainers(job, standby=None), timeout=10, what="no trainer or standby left")
