"""Shared-server mode (issue 33): a member's trainer planting FIFOs in its own attempt dir cannot stop another
member's job from being supervised. Real users (the fixture of ``test_shared_server.py``), a root daemon.

Before: the daemon (root) opened the FIFO at the next poll of the planter's job and waited in ``open()`` for
good; the other member's trainer, SIGKILLed, was never restarted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from supervisor.api.client import Client
from supervisor.jobfiles.layout import JobLayout
from tests.integration.test_shared_server import Interpreter, User, _ctl, shared  # noqa: F401 - the fixture
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

pytestmark = pytest.mark.e2e


def test_a_members_fifo_cannot_stop_another_members_restart(
        shared: tuple[Path, str, list[User], str, Interpreter]) -> None:  # noqa: F811 - the fixture
    base, group, (alice, bob, _outsider), _, interp = shared
    state = base / "state"
    daemon = DaemonProc(state, base, fake_env(state, **interp.env), python=interp.python)
    daemon.start(f"access.group={group}")
    try:
        jobs: dict[str, str] = {}
        for user, extra in ((alice, {"heartbeat_every": 3600}), (bob, {})):  # alice's beats stop after the first
            cfg = write_config(user.workdir, f"job-{user.name[-8:]}", steps=10**6, step_time=0.05, ckpt_every=20,
                               **extra)
            os.chown(cfg, user.uid, user.gid)
            result = _ctl(daemon, user.name, user.workdir, "submit", str(cfg))
            assert result.returncode == 0, result.stderr
            jobs[user.name] = result.stdout.strip().splitlines()[-1]
        daemon.live_pid(jobs[alice.name], 1)
        bob_pid = daemon.live_pid(jobs[bob.name], 1)

        # alice (as herself: her attempt dir is hers) puts FIFOs where the daemon reads her job's files
        attempt = JobLayout(Path(daemon.status(jobs[alice.name])["job_dir"])).attempt(1)
        for path in (attempt.heartbeat, attempt.exit_record, attempt.monitor_exit):
            planted = subprocess.run(["runuser", "-u", alice.name, "--", "sh", "-c",
                                      f'rm -f "{path}" && mkfifo "{path}"'], capture_output=True, text=True)
            assert planted.returncode == 0, planted.stderr
        time.sleep(1.5)  # the daemon polls (tick 0.5 s) alice's job several times

        client = Client(state, timeout=10)
        for job in jobs.values():
            start = time.monotonic()
            client.call("status", job=job)
            assert time.monotonic() - start < 2.0

        # bob's trainer dies: the daemon restarts it as ever
        killed_at = time.monotonic()
        os.kill(bob_pid, signal.SIGKILL)
        daemon.live_pid(jobs[bob.name], 2, timeout=15)
        assert time.monotonic() - killed_at < 10
        assert wait_for(lambda: daemon.status(jobs[bob.name])["restarts"] == 1, timeout=10)
        assert daemon.status(jobs[alice.name])["state"] == "running"  # alice's job: supervised on, unharmed
        assert "is not read: it is a FIFO" in daemon.log.read_text()
    finally:
        if daemon.proc is not None:
            daemon.kill(signal.SIGTERM)
        daemon.kill_leftovers()
