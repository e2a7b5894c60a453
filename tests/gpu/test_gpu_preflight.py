"""Pre-flight with real processes listed on a simulated GPU: our orphans die, foreign ones block."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import psutil
import pytest

from supervisor.gpu.preflight import preflight
from tests.support.harness import process_gone

from .conftest import FakeGpuFile


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started by a test; whatever survives is killed and reaped at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def spawn(procs: list[subprocess.Popen[bytes]], *argv: str, env: dict[str, str] | None = None) -> int:
    proc = subprocess.Popen(list(argv), env=env)
    procs.append(proc)
    return proc.pid




def _started(pid: int) -> float:
    """The start time that, with the pid, identifies a process we started."""
    return psutil.Process(pid).create_time()


def test_free_gpus_pass(gpu_file: FakeGpuFile) -> None:
    result = preflight([0, 1], gpu_file.backend(), {}, kill_own=True, wait_s=1.0)
    assert (result.ok, result.reasons, result.killed) == (True, [], [])


def test_orphan_of_ours_is_killed_and_its_memory_waited_for(gpu_file: FakeGpuFile,
                                                            procs: list[subprocess.Popen[bytes]]) -> None:
    orphan = spawn(procs, "sleep", "60")
    gpu_file.set(1, processes=[{"pid": orphan, "used_mib": 4096}])
    result = preflight([1], gpu_file.backend(), {orphan: _started(orphan)}, kill_own=True, wait_s=5.0, poll_s=0.01)
    assert (result.ok, result.reasons, result.killed) == (True, [], [orphan])
    assert process_gone(orphan)


def test_descendant_of_an_own_pid_is_ours(gpu_file: FakeGpuFile, procs: list[subprocess.Popen[bytes]]) -> None:
    shell = spawn(procs, "sh", "-c", "sleep 60 & echo $! > /dev/null; wait")
    deadline = time.monotonic() + 5
    while not psutil.Process(shell).children() and time.monotonic() < deadline:
        time.sleep(0.01)
    [worker] = psutil.Process(shell).children()
    gpu_file.set(0, processes=[{"pid": worker.pid, "used_mib": 1024}])
    result = preflight([0], gpu_file.backend(), {shell: _started(shell)}, kill_own=True, wait_s=5.0, poll_s=0.01)
    assert result.ok, result.reason
    assert result.killed == [worker.pid]
    assert process_gone(worker.pid)


def test_environment_marker_identifies_an_orphan_whose_parent_died(
        gpu_file: FakeGpuFile, procs: list[subprocess.Popen[bytes]]) -> None:
    marked = spawn(procs, "sleep", "60", env={**os.environ, "ML_SUPERVISOR_TEST_MARK": "job-1"})
    gpu_file.set(0, processes=[{"pid": marked, "used_mib": 512}])
    result = preflight([0], gpu_file.backend(), {}, kill_own=True, wait_s=5.0, poll_s=0.01,
                       own_env_key="ML_SUPERVISOR_TEST_MARK")
    assert (result.ok, result.killed) == (True, [marked])


def test_environment_marker_of_another_daemon_is_foreign(gpu_file: FakeGpuFile,
                                                         procs: list[subprocess.Popen[bytes]]) -> None:
    other = spawn(procs, "sleep", "60", env={**os.environ, "ML_SUPERVISOR_TEST_MARK": "/var/lib/other"})
    gpu_file.set(0, processes=[{"pid": other, "used_mib": 512}])
    result = preflight([0], gpu_file.backend(), {}, kill_own=True, wait_s=1.0,
                       own_env_key="ML_SUPERVISOR_TEST_MARK", own_env_value="/var/lib/ours")
    assert (result.ok, result.killed) == (False, [])
    assert result.reason == f"gpu 0: foreign process {other} (sleep) holds 512 MiB"


def test_foreign_process_delays_the_launch(gpu_file: FakeGpuFile, procs: list[subprocess.Popen[bytes]]) -> None:
    foreign = spawn(procs, "sleep", "60")
    gpu_file.set(1, processes=[{"pid": foreign, "used_mib": 2048}])
    # our own pid among own_pids must not make every child of ours an orphan
    ours = {os.getpid(): _started(os.getpid()), 1: _started(1)}
    result = preflight([0, 1], gpu_file.backend(), ours, kill_own=True, wait_s=1.0,
                       own_env_key="ML_SUPERVISOR_TEST_MARK")
    assert not result.ok
    assert result.reasons == [f"gpu 1: foreign process {foreign} (sleep) holds 2048 MiB"]
    assert result.killed == []
    assert psutil.Process(foreign).status() != psutil.STATUS_ZOMBIE  # untouched


def test_orphan_left_alive_when_killing_is_off(gpu_file: FakeGpuFile, procs: list[subprocess.Popen[bytes]]) -> None:
    orphan = spawn(procs, "sleep", "60")
    gpu_file.set(0, processes=[{"pid": orphan, "used_mib": 100}])
    result = preflight([0], gpu_file.backend(), {orphan: _started(orphan)}, kill_own=False, wait_s=1.0)
    assert not result.ok
    assert result.reason == f"gpu 0: process {orphan} (sleep) of an earlier attempt is still running"
    assert not process_gone(orphan, timeout_s=0.05)


def test_lost_gpu_fails_preflight(gpu_file: FakeGpuFile) -> None:
    gpu_file.set(0, lost=True)
    result = preflight([0, 1], gpu_file.backend(), {}, kill_own=True, wait_s=1.0)
    assert (result.ok, result.reasons) == (False, ["gpu 0: GPU is lost"])


def test_a_stranger_that_reused_a_known_trainer_pid_is_foreign(gpu_file: FakeGpuFile,
                                                              procs: list[subprocess.Popen[bytes]]) -> None:
    # issue 11: a GPU process whose pid equals a past trainer's is ours only if its start time is the trainer's
    stranger = spawn(procs, "sleep", "60")
    trainer_started_long_ago = psutil.Process(stranger).create_time() - 3600
    gpu_file.set(0, processes=[{"pid": stranger, "used_mib": 512}])
    result = preflight([0], gpu_file.backend(), {stranger: trainer_started_long_ago}, kill_own=True, wait_s=1.0)
    assert (result.ok, result.killed) == (False, [])
    assert result.reason == f"gpu 0: foreign process {stranger} (sleep) holds 512 MiB"
    assert not process_gone(stranger, timeout_s=0.05)


def test_a_child_of_a_stranger_that_reused_a_known_pid_is_foreign(gpu_file: FakeGpuFile,
                                                                 procs: list[subprocess.Popen[bytes]]) -> None:
    shell = spawn(procs, "sh", "-c", "sleep 60 & wait")
    deadline = time.monotonic() + 5
    while not psutil.Process(shell).children() and time.monotonic() < deadline:
        time.sleep(0.01)
    [worker] = psutil.Process(shell).children()
    gpu_file.set(0, processes=[{"pid": worker.pid, "used_mib": 1024}])
    wrong_start = psutil.Process(shell).create_time() - 3600
    result = preflight([0], gpu_file.backend(), {shell: wrong_start}, kill_own=True, wait_s=1.0)
    assert (result.ok, result.killed) == (False, [])
    assert not process_gone(worker.pid, timeout_s=0.05)
