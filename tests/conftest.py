"""Shared fixtures: a real daemon process driving the fake trainer (see tests/support/harness.py)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

__all__ = ["DaemonProc", "wait_for", "write_config"]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    """A real daemon driving the fake trainer; stopped (not its trainers' killers) at the end."""
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    d = DaemonProc(state, work, fake_env(state))
    d.start()
    yield d
    if d.proc is not None:
        d.kill(signal.SIGTERM)
    d.kill_leftovers()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keep every test of the one local Slurm cluster on one xdist worker.

    The cluster is a session fixture: under ``pytest -n N --dist loadgroup`` each worker would
    otherwise start its own munged/slurmctld/slurmd set, doubling the load for no coverage.
    """
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))
