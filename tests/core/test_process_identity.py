"""Pid reuse: nothing is signalled on a pid alone (issue 11, item 1).

The stranger is a real ``setsid sleep`` (its own session and process group,
as a reused pid would be); the store's record points at it the way a record
from before a reboot or from long ago would.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.runners.base import AttemptRef
from supervisor.runners.local import LocalRunner


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process in a session and process group of its own."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # what `setsid sleep 60` makes
    assert os.getpgid(proc.pid) == proc.pid
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    time.sleep(0.2)  # a SIGKILL, if one was sent, has landed by now
    return proc.poll() is None


def _ref(tmp_path: Path, state: dict[str, object]) -> AttemptRef:
    return AttemptRef("job-1", 1, tmp_path / "attempts" / "1", state)


def test_kill_spares_a_stranger_with_a_recorded_pid_and_no_start_time(tmp_path: Path,
                                                                      stranger: subprocess.Popen[bytes]) -> None:
    # A record from before start times were kept: the pid alone proves nothing.
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    try:
        state = {"monitor_pid": stranger.pid, "monitor_started": None, "trainer_pid": stranger.pid,
                 "pgid": stranger.pid}
        assert runner.kill(_ref(tmp_path, state)) == []
        assert _alive(stranger)
    finally:
        runner.close()


def test_kill_spares_a_stranger_that_reused_the_trainer_pid(tmp_path: Path,
                                                            stranger: subprocess.Popen[bytes]) -> None:
    started = psutil.Process(stranger.pid).create_time()
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    try:
        # our trainer had this pid an hour ago; the monitor is long gone
        state = {"monitor_pid": 999_999_999, "monitor_started": started - 3600, "trainer_pid": stranger.pid,
                 "pgid": stranger.pid, "trainer_started": started - 3600, "boot_id": _boot_id()}
        ref = _ref(tmp_path, state)
        assert runner.kill(ref) == []
        runner.graceful_stop(ref)  # SIGTERM would end sleep
        assert not runner.request_checkpoint(ref)  # SIGUSR1 would end sleep
        assert _alive(stranger)
    finally:
        runner.close()


def test_kill_spares_a_process_of_the_same_pid_and_start_in_another_boot(tmp_path: Path,
                                                                         stranger: subprocess.Popen[bytes]) -> None:
    started = psutil.Process(stranger.pid).create_time()
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    try:
        state = {"monitor_pid": stranger.pid, "monitor_started": started, "trainer_pid": stranger.pid,
                 "pgid": stranger.pid, "trainer_started": started, "boot_id": "an-earlier-boot"}
        assert runner.kill(_ref(tmp_path, state)) == []
        assert _alive(stranger)
    finally:
        runner.close()


def test_same_process_needs_pid_start_time_and_boot(stranger: subprocess.Popen[bytes]) -> None:
    from supervisor.processes.control import is_same_process

    started = psutil.Process(stranger.pid).create_time()
    assert is_same_process(stranger.pid, started, _boot_id())
    assert is_same_process(stranger.pid, started)
    assert not is_same_process(stranger.pid, None)
    assert not is_same_process(stranger.pid, started - 10)
    assert not is_same_process(stranger.pid, started, "another-boot")


def _boot_id() -> str:
    return os.environ.get("ML_SUPERVISOR_BOOT_ID") or Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_a_users_forged_pids_never_name_another_users_process(tmp_path: Path,
                                                                stranger: subprocess.Popen[bytes]) -> None:
    """Shared-server mode: a job run as its owner writes the monitor.json its pids come from. Pid, start time
    and boot id of someone else's process (here: ours) are easy to copy; the uid the runner recorded is not."""
    from supervisor.processes.boot import current_boot_id

    started = psutil.Process(stranger.pid).create_time()
    forged = {"monitor_pid": stranger.pid, "monitor_started": started, "trainer_pid": stranger.pid,
              "trainer_started": started, "pgid": stranger.pid, "boot_id": current_boot_id(), "world_size": 1}
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    try:
        ref = _ref(tmp_path, {**forged, "uid": os.getuid() + 4242})  # the job's owner: not who runs the stranger
        runner.graceful_stop(ref)
        assert runner.request_checkpoint(ref) is False
        assert runner.kill(ref) == []
        assert _alive(stranger)
        # the same record with the stranger's real uid is proof enough: the check is the uid, nothing else
        assert runner.kill(_ref(tmp_path, {**forged, "uid": os.getuid()})) == [stranger.pid]
        assert not _alive(stranger)
    finally:
        runner.close()
