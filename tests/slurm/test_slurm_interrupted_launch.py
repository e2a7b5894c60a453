"""The Slurm runner's side of an interrupted launch, on the local cluster: an allocation submitted by a
daemon that died before recording its Slurm job id is found by the job's name and cancelled."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from supervisor.runners.base import AttemptRef, AttemptSpec, RankLayout
from supervisor.runners.slurm import SlurmRunner
from supervisor.runners.slurm_script import slurm_job_name
from tests.support.harness import wait_for
from tests.support.slurm_cluster import Cluster

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]


def _alive(cluster: Cluster, name: str) -> list[str]:
    out = cluster.run("squeue", "-h", f"--name={name}", "-o", "%i %T").stdout
    return [line for line in out.splitlines() if line.strip()]


def test_kill_without_a_recorded_slurm_job_id_cancels_the_jobs_allocation_by_name(
        slurm_cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in slurm_cluster.env.items():
        monkeypatch.setenv(key, value)
    job_id = f"interrupted-{os.getpid()}"
    attempt_dir = tmp_path / "attempts" / "1"
    spec = AttemptSpec(job_id=job_id, attempt=1, command=(sys.executable, "-c", "import time; time.sleep(120)"),
                       env=dict(os.environ), workdir=str(tmp_path), attempt_dir=attempt_dir,
                       lock_path=tmp_path / "job.lock", ranks=RankLayout(1, (0,)),
                       options={"slurm": {"nodes": 1, "ntasks_per_node": 1}})
    SlurmRunner(lambda notice: None).launch(spec)  # the daemon that dies before recording the answer
    name = slurm_job_name(job_id)
    try:
        assert _alive(slurm_cluster, name), "sbatch submitted nothing"
        SlurmRunner(lambda notice: None).kill(AttemptRef(job_id, 1, attempt_dir, {}))  # the next daemon
        wait_for(lambda: _alive(slurm_cluster, name) == [] or None, timeout=60, interval=0.3,
                 what="the orphan allocation cancelled")
    finally:
        slurm_cluster.run("scancel", "--full", "--signal=KILL", f"--name={name}")
        slurm_cluster.run("scancel", f"--name={name}")
