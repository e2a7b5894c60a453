"""Real Lightning on the local Slurm cluster (two of its nodes): DDP over gloo, one rank per node, started by srun.

Each rank is a real ``python -m trainer`` (Lightning's imports take seconds here), so the
scenarios are few; the fake-trainer tests in test_slurm_daemon.py cover the paths in more variations.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import REPO, DaemonProc, real_env, wait_for
from tests.support.slurm_cluster import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.e2e, pytest.mark.lightning]

DIGITS = REPO / "configs" / "digits.yaml"
TWO_NODES = ["supervision.backend=slurm", "slurm.nodes=2", "slurm.ntasks_per_node=1", "trainer.max_epochs=4",
             "checkpoint.every_n_train_steps=5", "logger.wandb.mode=disabled",
             "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "model.init_args.step_delay=0.05",
             # the local cluster's node names (n1, n2) are not host names: rank 0 listens on 127.0.0.1
             "+env.MASTER_ADDR=127.0.0.1"]


@pytest.fixture
def lightning_daemon(slurm_cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProc]:
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state, **slurm_cluster.env))
    d.start("hang.startup_allowance=300")
    yield d
    if d.proc is not None:
        d.kill()
    for name in (p.name for p in (state / "jobs").iterdir()):
        slurm_cluster.run("scancel", "--full", "--signal=KILL", f"--name=mlsup-{name}")
    d.kill_leftovers()


def _rank_processes(job: str) -> dict[int, psutil.Process]:
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = proc.info["cmdline"] or []
            if len(cmd) > 2 and cmd[1:3] == ["-m", "trainer"] and any(job in c for c in cmd):
                found[int(proc.environ().get("SLURM_PROCID", "-1"))] = proc
        except (psutil.Error, ValueError):
            continue
    return found


def test_ddp_over_two_nodes_survives_a_killed_rank_inside_its_allocation(lightning_daemon: DaemonProc) -> None:
    d = lightning_daemon
    job = d.submit(DIGITS, *TWO_NODES)

    def saved_twice() -> bool:
        events = d.client().call("events", job=job)
        return sum(1 for e in events if e["kind"] == "checkpoint" and e["attempt"] == 1) >= 2

    wait_for(saved_twice, timeout=240, interval=0.5, what="attempt 1 to save two checkpoints")
    ranks = _rank_processes(job)
    assert sorted(ranks) == [0, 1], ranks
    ranks[1].send_signal(signal.SIGKILL)  # the rank on n2; srun --kill-on-bad-exit ends the step
    final = d.wait_state(job, "completed", "failed", timeout=400)
    assert final["state"] == "completed" and final["end_reason"] == "finished", final["attempts"]
    first, second = final["attempts"]
    assert first["reason"] == "crash" and first["nodes"] == "n[1-2]"
    assert second["resumed_from"] is not None and second["nodes"] == "n[1-2]"
    # restarted inside the same allocation as its next srun step, after its health probe (step 2)
    assert second["slurm_job_id"] == first["slurm_job_id"] and second["slurm_step_id"] == "3"
    attempt2 = JobLayout(Path(final["job_dir"])).attempt(2)
    # both ranks of the new allocation ran to the end: rank 1 wrote its own exit record
    records = [read_exit_record(attempt2.exit_record), read_exit_record(attempt2.exit_record_of(1))]
    assert [r.status if r else None for r in records] == ["completed", "completed"]
