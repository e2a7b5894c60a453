"""Shared fixtures of the end-to-end tests: a real daemon driving the real trainer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import REPO, DaemonProc, real_env


@pytest.fixture
def real_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    """A daemon running ``python -m trainer`` jobs from the repository, with short hang allowances."""
    state = tmp_path / "state"
    d = DaemonProc(state, REPO, real_env(state))
    d.start("hang.min_timeout=4", "hang.startup_allowance=120")
    yield d
    if d.proc is not None:
        d.kill()
    d.kill_leftovers()
