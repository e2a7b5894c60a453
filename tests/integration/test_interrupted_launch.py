"""A daemon SIGKILLed in the middle of a launch, for real: a real daemon, real monitor and trainer
processes, real SQLite. The window (processes started, their state not yet recorded) is recreated
exactly, without timing: the daemon is SIGKILLed while the attempt runs, and the store is put back
to what the launch had written by then (the attempt's row with an empty runner state, the job still
queued)."""

from __future__ import annotations

import signal
import sqlite3

import psutil
import pytest

from supervisor.jobfiles.layout import JobLayout
from tests.support.harness import DaemonProc, process_gone, write_config

pytestmark = pytest.mark.e2e


def test_the_next_daemon_kills_the_unrecorded_attempt_and_relaunches_it_as_the_next_number(
        daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=200, step_time=0.05, ckpt_every=10)
    job = daemon.submit(cfg)
    trainer = psutil.Process(daemon.live_pid(job, 1))
    monitor = trainer.parent()
    assert monitor is not None and "supervisor.processes.attempt_monitor" in " ".join(monitor.cmdline())
    daemon.kill(signal.SIGKILL)
    with sqlite3.connect(daemon.state_dir / "supervisor.db") as db:
        db.execute("UPDATE attempts SET runner_state = '{}', pid = NULL WHERE job_id = ? AND n = 1", (job,))
        db.execute("UPDATE jobs SET state = 'queued' WHERE id = ?", (job,))

    daemon.start()
    daemon.live_pid(job, 2)
    # the orphan is gone before attempt 2 runs: its monitor held the job lock, which attempt 2 needed
    assert process_gone(trainer.pid) and process_gone(monitor.pid), "the orphan of attempt 1 still runs"
    final = daemon.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed"
    first, second = final["attempts"]
    assert first["reason"] == "crash" and "launch interrupted" in first["detail"]
    assert second["reason"] == "completed"
    jl = JobLayout(daemon.state_dir / "jobs" / job)
    assert jl.attempt(2).dir.is_dir() and jl.attempt(2).dir != jl.attempt(1).dir
