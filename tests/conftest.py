"""Shared fixtures: a real daemon process driving the fake trainer (see tests/support/harness.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

__all__ = ["DaemonProc", "wait_for", "write_config"]

# CI sets CI=true (GitHub Actions, GitLab and most others do; .ci/run is what they run).
UNDER_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, None, None]:
    """Under CI, a skipped test is a failure unless it is marked ``ci_may_skip(why)``.

    ``.ci/run`` installs what the suite needs (Chromium, systemd, Slurm and munge, the dev extras with
    playwright and py-spy) and CI runs it as root (the shared-server tests' users, the disk-full tests'
    tmpfs): a skip there means an install step broke, and must not pass as green. A test whose need is
    no part of CI (a GPU box's NVML) carries the marker with the reason. Outside CI, skips stay skips,
    each printed with its reason (``-rs`` in pyproject's addopts).
    """
    outcome = yield
    report = outcome.get_result()
    if not UNDER_CI or not report.skipped or hasattr(report, "wasxfail") or item.get_closest_marker("ci_may_skip"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI: {reason}\n.ci/run installs or provides what this test needs, so this "
                       "skip means a broken install step; mark the test ci_may_skip(why) only for a need CI "
                       "cannot meet")
