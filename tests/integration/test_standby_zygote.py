"""A job's later standbys are forked from its zygote (``trainer/zygote.py``), under the real daemon.

The fake trainer runs in the forked ranks as it runs exec'd (``runpy``), so these tests see the
process tree, the command lines and environments, the takeover, the zygote's end with its job
and with the daemon, and the fall back to exec'd standbys when the zygote cannot fork safely.
The real-Lightning standbys of ``tests/e2e/test_standby.py`` are forked the same way.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.runners.base import OWN_ENV_KEY
from supervisor.runners.standby_process import STANDBY_ENV
from tests.support.harness import DaemonProc, daemon_with_site, wait_for, write_config, zygote_processes

pytestmark = pytest.mark.e2e

ZYGOTE = ["-m", "trainer.zygote"]


def _job(d: DaemonProc, name: str) -> str:
    return d.submit(write_config(d.workdir, name, supervision={"standby": "on"}, steps=400, step_time=0.02,
                                 ckpt_every=5, heartbeat_every=0.1, standby_prepare_s=0.3))


def _ready_standby(d: DaemonProc, job: str, not_pid: int | None = None) -> int:
    """The pid of the job's standby once it is ready (and is not ``not_pid``)."""
    def ready() -> int | None:
        standby = d.status(job)["standby"]
        ok = standby and standby["state"] == "ready" and standby["pid"] and standby["pid"] != not_pid
        return int(standby["pid"]) if ok else None

    return wait_for(ready, timeout=60, interval=0.05, what="a ready standby")


def test_later_standbys_are_forked_from_the_jobs_zygote_and_look_exec_d(daemon: DaemonProc) -> None:
    d = daemon
    job = _job(d, "forked")
    pid1 = d.live_pid(job, 1)
    standby = _ready_standby(d, job)
    monitor = psutil.Process(standby).parent()
    zygote = monitor.parent()
    # Attempt 2's standby: its monitor is a child of the job's zygote, not of the daemon...
    assert zygote.cmdline()[1:3] == ZYGOTE and zygote.pid != d.proc.pid  # type: ignore[union-attr]
    assert "--attempt-dir" not in zygote.cmdline()  # outlives attempts: names none (the tests' and runner's key)
    # ...yet its monitor and rank show the command lines and environments an exec gives them.
    attempt2 = str(Path(d.status(job)["job_dir"]) / "attempts" / "2")
    for proc, program in ((monitor, "supervisor.processes.attempt_monitor"), (psutil.Process(standby), "fake_trainer")):
        cmdline = [arg for arg in proc.cmdline() if arg]
        assert cmdline[1:3] == ["-m", program] and "--standby" in cmdline
        assert cmdline[cmdline.index("--attempt-dir") + 1] == attempt2
        env = proc.environ()
        assert env[STANDBY_ENV] == job and env[OWN_ENV_KEY] == str(d.state_dir)
        assert "ML_SUPERVISOR_ENVIRONMENT_ROOM" not in env  # the zygote's room, overwritten
    assert monitor.parent().pid == zygote.pid and os.getsid(monitor.pid) == monitor.pid  # a session of its own
    shown = d.status(job)["zygote"]  # status shows the zygote, and what memory it holds
    assert (shown["state"], shown["pid"]) == ("ready", zygote.pid) and shown["rss_mb"] > 5

    os.kill(pid1, signal.SIGKILL)
    assert d.live_pid(job, 2) == standby  # the forked standby took over
    third = _ready_standby(d, job, not_pid=standby)  # the next one is forked at once: the zygote is warm
    assert psutil.Process(third).parent().parent().pid == zygote.pid
    os.kill(standby, signal.SIGKILL)
    assert d.live_pid(job, 3) == third
    final = d.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["global_step"] == 400, final["detail"]
    assert [a["reason"] for a in final["attempts"]] == ["crash", "crash", "completed"]
    wait_for(lambda: not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE, timeout=30,
             what="the zygote gone with its job")
    assert d.status(job)["zygote"] is None


def test_a_killed_zygote_is_replaced_and_the_next_standby_forked_from_the_new_one(daemon: DaemonProc) -> None:
    d = daemon
    job = _job(d, "zygote-killed")
    pid1 = d.live_pid(job, 1)
    standby = _ready_standby(d, job)
    zygote = psutil.Process(standby).parent().parent()
    assert zygote.cmdline()[1:3] == ZYGOTE
    zygote.kill()  # the OOM killer's way: no word to the daemon
    wait_for(lambda: d.status(job)["zygote"] is None, timeout=30, what="status without the killed zygote")
    os.kill(pid1, signal.SIGKILL)
    assert d.live_pid(job, 2) == standby  # its forked standby lives on (a session of its own) and takes over
    third = _ready_standby(d, job, not_pid=standby)
    fresh = psutil.Process(third).parent().parent()
    assert fresh.cmdline()[1:3] == ZYGOTE and fresh.pid != zygote.pid  # forked again, from a new zygote
    assert d.status(job)["zygote"]["pid"] == fresh.pid
    assert "its zygote died" in d.log.read_text()
    os.kill(standby, signal.SIGKILL)
    assert d.live_pid(job, 3) == third
    final = d.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["global_step"] == 400, final["detail"]


def test_the_zygote_ends_with_its_daemon(daemon: DaemonProc) -> None:
    d = daemon
    job = _job(d, "daemon-dies")
    d.live_pid(job, 1)
    _ready_standby(d, job)
    [zygote] = zygote_processes(d.state_dir)
    d.kill(signal.SIGKILL)  # no goodbye: the zygote sees its request pipe closed
    wait_for(lambda: not zygote.is_running() or zygote.status() == psutil.STATUS_ZOMBIE, timeout=30,
             what="the zygote gone with the daemon")


@pytest.fixture
def threaded_zygote_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    """A daemon whose processes import a ``sitecustomize`` that starts a thread in a zygote only."""
    d = daemon_with_site(tmp_path, "import os, threading, time\n"
                         "if 'ML_SUPERVISOR_ENVIRONMENT_ROOM' in os.environ:  # set for the zygote alone\n"
                         "    threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n")
    d.start()
    try:
        yield d
    finally:
        if d.proc is not None:
            d.kill(signal.SIGTERM)
        d.kill_leftovers()


def test_a_zygote_with_a_thread_it_cannot_account_for_leaves_the_job_exec_d_standbys(
        threaded_zygote_daemon: DaemonProc) -> None:
    d = threaded_zygote_daemon
    job = _job(d, "threaded")
    pid1 = d.live_pid(job, 1)
    wait_for(lambda: "its zygote failed" in d.log.read_text(), timeout=60, what="the zygote's refusal")
    assert "a fork would copy only the calling thread" in d.log.read_text()
    standby = _ready_standby(d, job)
    assert psutil.Process(standby).parent().parent().pid == d.proc.pid  # type: ignore[union-attr]
    assert zygote_processes(d.state_dir) == []
    os.kill(pid1, signal.SIGKILL)
    assert d.live_pid(job, 2) == standby
    d.ctl("stop", job)
    d.wait_state(job, "stopped", timeout=60)

