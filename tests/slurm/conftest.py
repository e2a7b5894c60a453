"""The local three-node Slurm cluster (started once per session) and a daemon that submits to it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, fake_env
from tests.support.slurm_cluster import NODES, Cluster, missing_requirements, start, stop


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``munged``, ``slurmctld`` and ``slurmd -N n1`` .. ``-N n3`` on this machine, for the whole session."""
    reason = missing_requirements()
    if reason:
        pytest.skip(f"no local Slurm cluster: {reason}")
    root = tmp_path_factory.mktemp("slurm")
    cluster = start(root)
    yield cluster
    stop(root)


@pytest.fixture
def slurm_daemon(slurm_cluster: Cluster, tmp_path: Path) -> Iterator[DaemonProc]:
    """A real daemon (fake trainer) whose Slurm commands reach the local cluster; nothing of it left in squeue."""
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    d = DaemonProc(state, work, fake_env(state, **slurm_cluster.env))
    d.start()
    yield d
    if d.proc is not None:
        d.kill(signal.SIGTERM)
    slurm_cluster.run("scancel", "--full", "--signal=KILL", "--name", ",".join(_names(d)))
    slurm_cluster.run("scancel", "--name", ",".join(_names(d)))
    d.kill_leftovers()
    for node in NODES:  # a test that took a node down leaves it usable for the next
        slurm_cluster.run("scontrol", "update", f"nodename={node}", "state=resume")


def _names(d: DaemonProc) -> list[str]:
    jobs = d.state_dir / "jobs"
    return [f"mlsup-{p.name}" for p in jobs.iterdir()] if jobs.exists() else ["mlsup-none"]
