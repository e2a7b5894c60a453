"""The daemon on a full disk (issue 11, item 3): a store write that fails is reported, the daemon keeps running.

Real: the state dir (SQLite store, job dirs) is a small tmpfs filled to ENOSPC
while the daemon runs.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.full_disk import fill, small_tmpfs
from tests.support.harness import DaemonProc, fake_env, write_config


@pytest.fixture
def daemon_on_small_disk(tmp_path: Path) -> Iterator[DaemonProc]:
    with small_tmpfs(tmp_path / "state", size="8m") as state:
        work = tmp_path / "work"
        work.mkdir()
        d = DaemonProc(state, work, fake_env(state))
        d.start()
        try:
            yield d
        finally:
            if d.proc is not None:
                d.kill(signal.SIGTERM)
            d.kill_leftovers()


def test_a_submit_on_a_full_disk_fails_with_one_line_and_the_daemon_goes_on(daemon_on_small_disk: DaemonProc) -> None:
    d = daemon_on_small_disk
    config = write_config(d.workdir, steps=3, step_time=0.01)
    filler = fill(d.state_dir)
    refused = d.ctl("submit", str(config), check=False)
    assert refused.returncode != 0
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and ("disk" in lines[0] or "space" in lines[0]), refused.stderr
    assert d.proc is not None and d.proc.poll() is None  # the daemon is still running
    assert d.ctl_ok("list")
    filler.unlink()
    job = d.submit(config)
    assert d.wait_state(job, "completed")["state"] == "completed"
