"""A job whose files do not answer waits, said why; every other job goes on (issue 33, item 2).

A hung NFS server, for real: a FUSE filesystem that never answers (``tests/support/stalling_fs.py``) is
mounted over a running job's attempt dir and checkpoint dir, so every lookup, ``stat`` and read the daemon
makes there waits in the kernel. The daemon (``file_timeout=0.5``) keeps answering ``status`` of both jobs
within 2 s, restarts the other job after a SIGKILL as fast as ever, says why the stalled job waits, and once
the mount is gone (the server "answers" again) reads the job's files and supervises it as before.

Before: the first read of the stalled job's heartbeat held the loop thread in the kernel for good.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.api.client import Client
from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.support.stalling_fs import StallingFs, available

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(available() is not None, reason=f"FUSE: {available()}")]

WAIT = "the job's files do not answer"


@pytest.fixture
def quick_deadline_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    state = tmp_path / "state"
    work = tmp_path / "work"
    work.mkdir()
    d = DaemonProc(state, work, fake_env(state))
    d.start("file_timeout=0.5")
    try:
        yield d
    finally:
        if d.proc is not None:
            d.kill(signal.SIGTERM)
        d.kill_leftovers()


def answers_within(client: Client, seconds: float, job: str) -> dict[str, object]:
    start = time.monotonic()
    status: dict[str, object] = client.call("status", job=job)
    took = time.monotonic() - start
    assert took < seconds, f"status of {job} took {took:.1f}s"
    return status


def test_a_job_on_a_filesystem_that_does_not_answer_waits_and_no_other_job_does(
        quick_deadline_daemon: DaemonProc) -> None:
    d = quick_deadline_daemon
    assert d.proc is not None
    other = d.submit(write_config(d.workdir, "other", steps=100_000, step_time=0.02, ckpt_every=20))
    victim = d.submit(write_config(d.workdir, "victim", steps=1000, step_time=0.02, ckpt_every=5, hang_at=15,
                                   supervision={"max_restarts": 0}))
    victim_pid = d.live_pid(victim, 1)
    wait_for(lambda: d.status(victim)["global_step"] >= 10, what="the victim's progress")
    time.sleep(0.3)  # it stops writing at step 15
    layout = JobLayout(Path(d.status(victim)["job_dir"]))
    client = Client(d.state_dir, timeout=10)
    threads_before = psutil.Process(d.proc.pid).num_threads()

    with StallingFs(layout.attempt(1).dir) as attempt_fs, StallingFs(layout.checkpoints) as checkpoint_fs:
        # status answers about both (the victim's: without what its files would say)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            answers_within(client, 2.0, other)
            answers_within(client, 2.0, victim)
            time.sleep(0.2)
        waiting = wait_for(lambda: str(d.status(victim).get("wait_reason") or "").startswith(WAIT) and
                           d.status(victim), timeout=10, what="the victim to wait, said why")
        assert str(layout.attempt(1).dir) in str(waiting["wait_reason"]) or \
            str(layout.checkpoints) in str(waiting["wait_reason"]), waiting["wait_reason"]
        assert waiting["state"] == "running"  # waiting, not ended: nothing was decided on what was not read
        assert attempt_fs.held >= 1  # the daemon did ask the "server", and was not held by it
        threads_stalled = psutil.Process(d.proc.pid).num_threads()

        # the other job's restart is not held up
        other_pid = d.live_pid(other, 1)
        killed_at = time.monotonic()
        os.kill(other_pid, signal.SIGKILL)
        d.live_pid(other, 2, timeout=15)
        assert time.monotonic() - killed_at < 10
        # a stalled directory costs one reader thread, not one per read: the reads (and the restart) since the
        # stall began added none; a daemon thread started lazily (14 or 15 before it, by timing) is the one allowed
        for _ in range(10):
            answers_within(client, 2.0, victim)
        threads_after = psutil.Process(d.proc.pid).num_threads()
        assert threads_after <= threads_stalled + 1, (threads_before, threads_stalled, threads_after)
        assert threads_after <= threads_before + 5, (threads_before, threads_stalled, threads_after)
        held = attempt_fs.held + checkpoint_fs.held

    # the server answers again: the job's files are read, the reason goes, and the job is supervised as before
    wait_for(lambda: not d.status(victim).get("wait_reason"), timeout=10, what="the wait reason to clear")
    assert held < 20  # each stalled directory was asked a few times, not at every read of every poll
    os.kill(victim_pid, signal.SIGKILL)
    ended = d.wait_state(victim, "failed", timeout=30)
    assert ended["attempts"][0]["reason"] == "crash" and ended["attempts"][0]["signal"] == "SIGKILL"
    assert d.status(other)["state"] == "running"
