"""Scheduled runs as a user types them, against a real daemon (``ml-supervisor serve``, the fake trainer).

A bad cron line is one line and exit 2, and nothing is kept; a good one shows its next run
times and is listed by ``supervisorctl schedules``; an ``--at`` a few seconds ahead becomes a
normal job when its time comes (the daemon's loop sleeps until the schedule's timer); the
schedules survive a daemon SIGKILL; ``unschedule`` removes one. The fire times on a moved
clock, the misfire setting and the half-done fire are tested in-process: tests/core/test_schedules.py.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from supervisor import __version__
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path / "state", tmp_path, fake_env(tmp_path / "state"))
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None:
            d.kill(signal.SIGTERM)
        d.kill_leftovers()


def test_schedules_from_the_command_line(daemon: DaemonProc, tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "nightly", steps=5, step_time=0.01)

    bad = daemon.ctl("submit", str(cfg), "--cron", "0 25 * * *", check=False)
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == ["supervisorctl: error: --cron '0 25 * * *': hour: Error validating expression "
                                       "'25': the last value (25) is higher than the maximum value (23)"]
    assert json.loads(daemon.ctl("schedules", "--all", "--json").stdout) == []

    made = daemon.ctl("submit", str(cfg), "--cron", "0 2 * * *", "--tz", "UTC")
    first, runs = made.stdout.splitlines()
    schedule_id = first.split(":")[0]
    assert first == f"{schedule_id}: cron '0 2 * * *' in UTC (misfire: run_once); each run a job of its own"
    assert runs.startswith("next runs: ") and runs.count("02:00:00 UTC") == 3
    listed = json.loads(daemon.ctl("schedules", "--json").stdout)
    assert [(s["id"], s["kind"], s["spec"], s["state"], len(s["next_runs"])) for s in listed] == [
        (schedule_id, "cron", "0 2 * * *", "active", 3)]
    assert schedule_id in daemon.ctl("schedules").stdout

    # one run a few seconds from now (enough for supervisorctl to start on a loaded box: a time already past is
    # refused): a normal job once its time comes, the daemon's loop sleeping until the schedule's timer
    soon = (datetime.now().astimezone() + timedelta(seconds=15)).isoformat(timespec="seconds")
    once_id = daemon.ctl("submit", str(cfg), "--at", soon, "--name", "once").stdout.split(":")[0]
    job_id = wait_for(lambda: _last_job(daemon, once_id), timeout=60, what="the --at run's job")
    assert daemon.wait_state(job_id, "completed")["name"] == "once"

    daemon.kill(signal.SIGKILL)  # the schedules are in the store
    daemon.start()
    after = json.loads(daemon.ctl("schedules", "--all", "--json").stdout)
    assert {(s["id"], s["state"], s["runs"]) for s in after} == {(schedule_id, "active", 0), (once_id, "done", 1)}

    assert daemon.ctl("unschedule", schedule_id).stdout.strip() == f"{schedule_id}: removed"
    assert json.loads(daemon.ctl("schedules", "--json").stdout) == []
    gone = daemon.ctl("unschedule", "sched-nope", check=False)
    assert gone.returncode == 3 and gone.stderr.count("\n") == 1 and "no schedule 'sched-nope'" in gone.stderr


def test_version_in_the_commands_and_in_status(daemon: DaemonProc) -> None:
    assert daemon.ctl("--version").stdout.strip() == f"supervisorctl (ml-supervisor) {__version__}"
    status = daemon.ctl("status").stdout
    assert status.splitlines()[0].startswith(f"ml-supervisor {__version__} · pid ")


def _last_job(daemon: DaemonProc, schedule_id: str) -> str | None:
    rows = json.loads(daemon.ctl("schedules", "--all", "--json").stdout)
    return next((r["last_job_id"] for r in rows if r["id"] == schedule_id), None)
