"""Bugs the chaos soak found, each pinned by a direct test (a real daemon and the fake trainer)."""

from __future__ import annotations

import pytest

from tests.support.harness import DaemonProc, write_config

pytestmark = pytest.mark.e2e


def test_a_finished_job_reports_the_exit_records_step_not_a_stale_heartbeats(daemon: DaemonProc) -> None:
    # heartbeats are throttled (the real trainer: every 2 s), so the last one lags the final step
    cfg = write_config(daemon.workdir, steps=23, step_time=0.02, ckpt_every=5, heartbeat_every=5.0)
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed" and final["end_reason"] == "finished"
    assert final["global_step"] == 23
