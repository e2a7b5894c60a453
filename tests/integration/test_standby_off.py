"""``supervision.standby: off`` under the real daemon: no standby process at any time, cold restarts as before.

The fake trainer speaks the standby protocol (``tests/integration/test_standby_ranks.py`` runs it with
``on``), so the daemon would start one here if the setting were not honoured. The real Lightning
jobs of ``tests/e2e/test_lightning_supervised.py`` restart cold with ``off`` too.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.support.harness import DaemonProc, standby_processes, wait_for, write_config
from tests.support.resume_oracle import best_not_newest

pytestmark = pytest.mark.e2e


def test_standby_off_never_starts_one_and_restarts_cold(daemon: DaemonProc) -> None:
    d = daemon
    job = d.submit(write_config(d.workdir, "off", supervision={"standby": "off"}, steps=80, step_time=0.05,
                                ckpt_every=5, heartbeat_every=0.1))
    pid1 = d.live_pid(job, 1)
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # all along, not only at the moments the test looks
        while not stop.is_set():
            seen.extend(standby_processes(d.state_dir))
            if d.status(job)["standby"] is not None:
                seen.append(-1)
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        wait_for(lambda: d.status(job)["global_step"] >= 20, timeout=60, what="attempt 1 stepping")
        os.kill(pid1, signal.SIGKILL)
        final = d.wait_state(job, "completed", "failed", timeout=120)
    finally:
        stop.set()
        watcher.join(5)
    assert final["state"] == "completed", final["detail"]
    assert [a["reason"] for a in final["attempts"]] == ["crash", "completed"]
    assert final["attempts"][1]["pid"] != pid1
    assert final["attempts"][1]["resumed_from"] == best_not_newest(final["job_dir"], 2)
    assert final["global_step"] == 80
    assert seen == []
    assert sorted(p.name for p in (Path(final["job_dir"]) / "attempts").iterdir()) == ["1", "2"]


def test_the_same_job_with_standby_on_has_one(daemon: DaemonProc) -> None:
    """The control: what the test above looks for is there when the setting is ``on``."""
    d = daemon
    job = d.submit(write_config(d.workdir, "on", supervision={"standby": "on"}, steps=200, step_time=0.05,
                                ckpt_every=5, heartbeat_every=0.1))
    d.live_pid(job, 1)
    wait_for(lambda: d.status(job)["standby"] is not None and standby_processes(d.state_dir), timeout=60,
             what="a standby")
    d.ctl("stop", job)
    d.wait_state(job, "stopped", timeout=60)
