"""Alerts and sd_notify from a real daemon: a crash loop reaches W&B (offline run file read back)
and alerts.jsonl; systemd's notify protocol on a socket the test owns."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor.alerts import read_alerts
from supervisor.daemon import Daemon
from supervisor.sdnotify import Notifier
from supervisor.settings import load_settings
from tests.alerts.wandb_offline_log import read_alerts as read_wandb_alerts
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config
from tests.support.notify_listener import NotifyListener
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e


def test_restart_and_completion_reach_wandb_offline_and_the_alert_log(daemon: DaemonProc) -> None:
    cfg = write_config(daemon.workdir, steps=20, step_time=0.02, ckpt_every=5, crash_at=12)
    job = daemon.submit(cfg, "logger.wandb.mode=offline", "logger.wandb.project=alerts-test")
    final = daemon.wait_state(job, "completed")
    wait_for(lambda: [a for a in read_alerts(daemon.state_dir, job_id=job) if a["status"] != "pending"] and
             len(read_alerts(daemon.state_dir, job_id=job)) >= 2 and
             all(a["status"] != "pending" for a in read_alerts(daemon.state_dir, job_id=job)),
             timeout=90, interval=0.5, what="both alerts delivered")
    local = read_alerts(daemon.state_dir, job_id=job)
    assert [a["event"] for a in local] == ["restart", "completed"]
    restart = local[0]
    assert restart["level"] == "WARN" and job.split("-")[0] in restart["title"]
    assert "boom at step 12" in restart["text"]
    assert best_not_newest(final["job_dir"], 2) in restart["text"]
    assert local[1]["level"] == "INFO"
    # the offline W&B run of the supervisor, in the job's wandb dir: read its .wandb file back
    wandb_dir = Path(final["wandb"]["dir"])
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{final['wandb']['run_id']}-supervisor/*.wandb"))
    assert files, f"no offline supervisor run under {wandb_dir}"
    alerts = [a for f in files for a in read_wandb_alerts(f)]
    titles = [a["title"] for a in alerts]
    assert restart["title"] in titles and local[1]["title"] in titles
    assert {a["level"] for a in alerts} >= {"WARN", "INFO"}
    assert "alert" in daemon.log.read_text()


def test_notify_ready_status_and_watchdog_stop_when_the_loop_hangs(tmp_path: Path, monkeypatch) -> None:
    for key, value in fake_env(tmp_path / "state").items():
        monkeypatch.setenv(key, value)
    with NotifyListener(abstract=True) as listener:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "400000",
                                      "WATCHDOG_PID": str(os.getpid())})
        daemon = Daemon(load_settings(None, ["web.enabled=false"], state_dir=str(tmp_path / "state")),
                        notifier=notifier)
        daemon.start()
        try:
            listener.wait_for("READY", "1", timeout_s=10)
            status = listener.wait_for("STATUS", timeout_s=10)
            assert "0 running" in status["STATUS"]
            pings = [m for m in listener.drain(1.5) if m.get("WATCHDOG") == "1"]
            assert len(pings) >= 3, "the loop pings at half of WATCHDOG_USEC"
            # hang the loop itself (run a blocking call on its thread): the pings must stop
            daemon.supervisor.loop.put("call", (time.sleep, (2.0,), _Future()))
            time.sleep(0.3)
            during = [m for m in listener.drain(1.4) if m.get("WATCHDOG") == "1"]
            assert during == [], "a hung loop must not ping the watchdog"
            after = [m for m in listener.drain(1.5) if m.get("WATCHDOG") == "1"]
            assert after, "pings resume once the loop runs again"
        finally:
            daemon.stop()
        listener.wait_for("STOPPING", "1", timeout_s=5)


class _Future:
    """The minimum of concurrent.futures.Future the loop's call path uses."""

    def set_running_or_notify_cancel(self) -> bool:
        return True

    def set_result(self, value: object) -> None:
        self.result = value

    def set_exception(self, exc: BaseException) -> None:
        raise exc
