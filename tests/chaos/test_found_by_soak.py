"""Bugs the chaos soak found, each pinned by a direct test (a real daemon and the fake trainer, or the part itself)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.alerts.dispatcher import AlertDispatcher
from supervisor.alerts.model import make_alert
from supervisor.alerts.store import read_alerts
from tests.support.harness import DaemonProc, write_config


@pytest.mark.e2e
def test_a_finished_job_reports_the_exit_records_step_not_a_stale_heartbeats(daemon: DaemonProc) -> None:
    # heartbeats are throttled (the real trainer: every 2 s), so the last one lags the final step
    cfg = write_config(daemon.workdir, steps=23, step_time=0.02, ckpt_every=5, heartbeat_every=5.0)
    job = daemon.submit(cfg)
    final = daemon.wait_state(job, "completed", "failed")
    assert final["state"] == "completed" and final["end_reason"] == "finished"
    assert final["global_step"] == 23


def test_an_alert_is_on_record_when_send_returns_before_any_thread_ran(tmp_path: Path) -> None:
    # The soak: a reboot (daemon SIGKILL) right after a restart decision lost that restart's
    # alert record, which a delivery thread used to write later. No thread is started here.
    dispatcher = AlertDispatcher(tmp_path / "state")
    alert = make_alert("restart", job_id="j", job_name="n", wandb=None, details={"attempt": 4})
    dispatcher.send(alert)
    assert [(a["alert_id"], a["event"]) for a in read_alerts(tmp_path / "state", job_id="j")] == [
        (alert.alert_id, "restart")]
