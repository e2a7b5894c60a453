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


def pytest_itemcollected(item: pytest.Item) -> None:
    """Keep the tests that share an expensive fixture on one xdist worker.

    Under ``pytest -n N --dist loadgroup`` a scoped fixture runs once per worker that gets one of its
    tests: the one local Slurm cluster (a session fixture) would start a munged/slurmctld/slurmd set per
    worker, and a module's real Lightning fit (``tests/trainer``) ran twice, for no coverage. Marked as
    each test is collected: xdist reads the groups in its own ``pytest_collection_modifyitems``.
    """
    if "slurm_cluster" in getattr(item, "fixturenames", ()):
        item.add_marker(pytest.mark.xdist_group("slurm"))
    elif _uses_a_module_fixture(item):
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def _uses_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)  # pytest's resolved fixtures of the test (no public API)
    if info is None:
        return False
    return any(d.scope in ("module", "package") for defs in info.name2fixturedefs.values() for d in defs)
