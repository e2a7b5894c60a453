"""A restart that comes while the job's zygote still imports waits for it (its imports have a head start on a
cold start's), then runs in the standby it forks, handed over at once; a stop calls the wait off; and a zygote
stuck in its imports does not outlive a SIGKILLed daemon (``PR_SET_PDEATHSIG``: it never reads its request
pipe), whose successor ends the attempt that waited for it and starts the next.

Real daemon, processes and signals, the fake trainer. The zygote's imports are held by a ``sitecustomize`` that
makes its last check before ``ready`` (``threadpool_info``) wait until the test creates a gate file.
"""

from __future__ import annotations

import os
import signal
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.harness import DaemonProc, daemon_with_site, wait_for, write_config, zygote_processes

pytestmark = pytest.mark.e2e

def _trainers_of(attempt_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if cmdline[1:3] == ["-m", "fake_trainer"] and str(attempt_dir) in cmdline:
            found.append(proc)
    return found


@pytest.fixture
def gated_daemon(tmp_path: Path) -> Iterator[DaemonProc]:
    """A daemon whose zygotes are not ready before ``<tmp>/gate`` exists."""
    d = daemon_with_site(tmp_path, (
        "import os, time\n"
        "if 'ML_SUPERVISOR_ENVIRONMENT_ROOM' in os.environ:  # set for the zygote alone\n"
        "    import threadpoolctl\n"
        f"    threadpoolctl.threadpool_info = lambda: [time.sleep(0.02) for _ in iter(lambda: os.path.exists("
        f"{str(tmp_path / 'gate')!r}), True)] and []\n"))
    try:
        yield d
    finally:
        if d.proc is not None:
            d.kill(signal.SIGTERM)
        d.kill_leftovers()
        for proc in zygote_processes(d.state_dir):  # what a failed run left: never left behind for ever
            proc.kill()


def _promised(d: DaemonProc, name: str) -> tuple[str, psutil.Process]:
    """Start the daemon and a standby job, SIGKILL its attempt 1 while the zygote is held in its imports, and
    wait for attempt 2's promise; the job and its zygote."""
    d.start()
    job = d.submit(write_config(d.workdir, name, supervision={"standby": "on"}, steps=300, step_time=0.02,
                                ckpt_every=5, heartbeat_every=0.1, standby_prepare_s=0.3))
    pid1 = d.live_pid(job, 1)
    [zygote] = wait_for(lambda: zygote_processes(d.state_dir) or None, timeout=60, what="the job's zygote importing")
    os.kill(pid1, signal.SIGKILL)
    wait_for(lambda: "waits for its zygote's imports" in d.log.read_text(), timeout=30, what="the promise")
    return job, zygote


def test_a_restart_while_the_zygote_imports_waits_for_it_and_runs_in_its_fork(gated_daemon: DaemonProc) -> None:
    d = gated_daemon
    job, zygote = _promised(d, "promised")
    job_dir = Path(d.status(job)["job_dir"])
    attempt2 = job_dir / "attempts" / "2"
    assert d.status(job)["state"] == "starting" and not _trainers_of(attempt2)  # no cold start beside it
    (d.state_dir.parent / "gate").touch()
    pid2 = d.live_pid(job, 2)
    assert psutil.Process(pid2).parent().parent().pid == zygote.pid  # its fork, handed over at once
    assert d.status(job)["standby"] is None  # it is the attempt, not a standby
    resumed = next(a for a in d.status(job)["attempts"] if a["n"] == 2)["resumed_from"]
    with zipfile.ZipFile(resumed) as zf:  # the checkpoint the policy named is the one it loaded
        step = int(zf.read("archive/data.pkl").decode().split("step=")[1])
    wait_for(lambda: f"fake trainer attempt 2 from step {step}\n" in (attempt2 / "stdout.log").read_text(),
             timeout=30, what="attempt 2 resumed")
    final = d.wait_state(job, "completed", "failed", timeout=120)
    assert final["state"] == "completed" and final["global_step"] == 300, final["detail"]
    assert final["restarts"] == 1


def test_a_stop_while_the_restart_waits_for_the_zygote_starts_nothing(gated_daemon: DaemonProc) -> None:
    d = gated_daemon
    job, _ = _promised(d, "called-off")
    d.ctl("stop", job)
    d.wait_state(job, "stopped", timeout=30)
    (d.state_dir.parent / "gate").touch()  # ready now: it forks nothing for the stopped job
    wait_for(lambda: not zygote_processes(d.state_dir), timeout=10, what="the zygote gone with its job")
    assert not _trainers_of(Path(d.status(job)["job_dir"]) / "attempts" / "2")


def test_a_daemon_killed_while_a_restart_waits_for_its_stuck_zygote(gated_daemon: DaemonProc) -> None:
    d = gated_daemon
    job, _ = _promised(d, "stuck")
    d.kill(signal.SIGKILL)  # the zygote's imports never end: it never reads its request pipe again
    wait_for(lambda: not zygote_processes(d.state_dir), timeout=10, what="the zygote gone with its daemon")
    d.start()  # finds attempt 2 promised, with no monitor: nothing of it runs; attempt 3 starts (cold)
    d.live_pid(job, 3)
    attempts = d.status(job)["attempts"]
    assert attempts[1]["ended_at"] is not None and attempts[1]["pid"] is None
    assert not _trainers_of(Path(d.status(job)["job_dir"]) / "attempts" / "2")
