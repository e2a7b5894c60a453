"""A zygote paused for a cold attempt (SIGSTOP: it cannot see its request pipe close) does not outlive a daemon
SIGKILLed before the next prepare resumes it: the kernel kills it with the daemon (``PR_SET_PDEATHSIG``), and a
new daemon of the state dir kills any zygote the old one left (``kill_leftover_standbys``).

Real daemon, real processes and signals; the zygote is kept "importing" by a ``sitecustomize`` that makes its
last check before ``ready`` (``threadpool_info``) sleep, so the cold restart finds it importing and pauses it,
and the cold attempt's processes sleep, so no prepare (after its first step) resumes it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from supervisor.runners.base import OWN_ENV_KEY
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config

pytestmark = pytest.mark.e2e

ZYGOTE = ["-m", "trainer.zygote"]


def _zygotes(state_dir: Path) -> list[psutil.Process]:
    """The live zygotes of ``state_dir`` (a zombie is gone: only its exit status is left)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if (proc.info.get("cmdline") or [])[1:3] == ZYGOTE and proc.status() != psutil.STATUS_ZOMBIE \
                    and proc.environ().get(OWN_ENV_KEY) == str(state_dir):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.fixture
def slow_zygote_daemon(tmp_path: Path) -> DaemonProc:
    """A daemon whose zygotes never get past their imports, and whose attempt 2 never starts training."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, time\n"
        "if 'ML_SUPERVISOR_ENVIRONMENT_ROOM' in os.environ:  # set for the zygote alone\n"
        "    import threadpoolctl\n"
        "    threadpoolctl.threadpool_info = lambda: time.sleep(3600) or []\n"
        "elif os.environ.get('ML_SUPERVISOR_ATTEMPT') == '2':  # the cold attempt never steps: no prepare resumes\n"
        "    time.sleep(3600)\n")
    state, work = tmp_path / "state", tmp_path / "work"
    work.mkdir()
    env = fake_env(state)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return DaemonProc(state, work, env)


def test_a_zygote_paused_for_a_cold_attempt_does_not_outlive_a_killed_daemon(slow_zygote_daemon: DaemonProc) -> None:
    d = slow_zygote_daemon
    zygote: psutil.Process | None = None
    try:
        d.start()
        job = d.submit(write_config(d.workdir, "paused", supervision={"standby": "on"}, steps=2000, step_time=0.02,
                                    ckpt_every=5, heartbeat_every=0.1, standby_prepare_s=0.3))
        pid1 = d.live_pid(job, 1)
        [zygote] = wait_for(lambda: _zygotes(d.state_dir) or None, timeout=60, what="the job's zygote importing")
        os.kill(pid1, signal.SIGKILL)  # attempt 2 starts cold: the zygote still imports, and is paused
        wait_for(lambda: zygote.status() == psutil.STATUS_STOPPED, timeout=30, what="the zygote paused")
        d.kill(signal.SIGKILL)  # before any prepare resumes it: nothing will SIGCONT it now
        wait_for(lambda: not _zygotes(d.state_dir), timeout=10, what="the paused zygote gone with its daemon")
        d.start()  # and a new daemon finds none of the old one's zygotes
        assert not [z for z in _zygotes(d.state_dir) if z.pid == zygote.pid]
    finally:
        if d.proc is not None:
            d.kill(signal.SIGTERM)
        d.kill_leftovers()
        for proc in _zygotes(d.state_dir):  # what a failed run left: never left stopped for ever
            proc.kill()
