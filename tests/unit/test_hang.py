"""Hang detection (pure: tables of heartbeats and clocks) and the stack dump of a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from supervisor.jobfiles.heartbeat import Heartbeat
from supervisor.processes.stacks import dump_stacks
from supervisor.rules.hang import check_hang, hang_timeout, update_slowest_step
from supervisor.settings import HangConfig

T0 = 1_700_000_000.0
S = HangConfig(startup_allowance=900.0, phase_allowance=600.0, multiple=5.0, min_timeout=60.0)


def beat(phase: str = "train", *, at: float = T0 + 1000, max_step: float | None = None, step: int = 100) -> Heartbeat:
    return Heartbeat(pid=4242, attempt=1, time=at, started_at=T0, phase=phase, step=step, epoch=2,
                     step_time=max_step / 2 if max_step else None, max_step_time=max_step)


@pytest.mark.parametrize(("setting", "heartbeat", "slowest", "expected"), [
    ("off", beat(max_step=1.0), 1.0, None),
    ("OFF", None, None, None),
    ("0", beat(), None, None),  # a zero timeout would kill every attempt: read as off
    # an explicit duration applies in every phase
    ("20m", beat(max_step=1.0), 1.0, 1200.0),
    ("20m", beat("validate"), None, 1200.0),
    ("90", None, None, 90.0),
    # auto: before the first step
    ("auto", None, None, 900.0),
    ("auto", beat("setup"), None, 900.0),
    ("auto", beat("train"), None, 900.0),  # training, but no step timed yet (compile, autotune)
    # auto: a multiple of the slowest step, never below the minimum
    ("auto", beat(max_step=30.0), None, 152.0),  # 5 x 30 s + the 2 s heartbeat period
    ("auto", beat(max_step=2.0), 30.0, 152.0),  # the attempt's running max counts, not only the last beat
    ("auto", beat(max_step=40.0), 30.0, 202.0),
    ("auto", beat(max_step=0.05), 0.05, 60.0),
    # auto: generous during validation, checkpoint saves and teardown
    ("auto", beat("validate", max_step=0.1), 0.1, 600.0),
    ("auto", beat("checkpoint", max_step=0.1), 0.1, 600.0),
    ("auto", beat("done", max_step=0.1), 0.1, 600.0),
    ("auto", beat("validate", max_step=200.0), 200.0, 1002.0),  # slow steps: the step rule if longer
    ("auto", beat("some-new-phase"), None, 600.0),
])
def test_hang_timeout_table(setting: str, heartbeat: Heartbeat | None, slowest: float | None,
                            expected: float | None) -> None:
    assert hang_timeout(setting, heartbeat, slowest, S) == expected


def test_hang_timeout_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        hang_timeout("soon", None, None, S)


@pytest.mark.parametrize(("now", "heartbeat", "slowest", "hung", "silent"), [
    # no heartbeat yet: the startup allowance counts from the attempt's start
    (T0 + 899, None, None, False, 899.0),
    (T0 + 901, None, None, True, 901.0),
    # training at ~1 s per step: 60 s minimum
    (T0 + 1059, beat(max_step=1.0), 1.0, False, 59.0),
    (T0 + 1061, beat(max_step=1.0), 1.0, True, 61.0),
    # validation: the phase allowance
    (T0 + 1500, beat("validate", max_step=1.0), 1.0, False, 500.0),
    (T0 + 1601, beat("validate", max_step=1.0), 1.0, True, 601.0),
    # a heartbeat older than the attempt (left over, or a clock step) does not count against it
    (T0 + 1030, beat(at=T0 - 5000, max_step=1.0), 1.0, False, 30.0),
    # a clock that went backwards is no silence
    (T0 + 900, beat(max_step=1.0), 1.0, False, 0.0),
])
def test_check_hang_table(now: float, heartbeat: Heartbeat | None, slowest: float | None, hung: bool,
                          silent: float) -> None:
    started = T0 + 1000 if heartbeat is not None and heartbeat.time < T0 else T0
    verdict = check_hang(now=now, attempt_started_at=started, heartbeat=heartbeat, slowest_step_s=slowest,
                         setting="auto", settings=S)
    assert (verdict.hung, verdict.silent_for_s) == (hung, silent)


def test_hang_verdict_explains_itself() -> None:
    verdict = check_hang(now=T0 + 1200, attempt_started_at=T0, heartbeat=beat(max_step=30.0, step=1234),
                         slowest_step_s=30.0, setting="auto", settings=S)
    assert verdict.hung and verdict.timeout_s == 152.0
    assert verdict.reason == ("no progress for 3m20s (phase train, step 1234, epoch 2; "
                              "timeout 2m32s: 5x the slowest step 30.00s + 2s beat)")
    startup = check_hang(now=T0 + 10, attempt_started_at=T0, heartbeat=None, slowest_step_s=None,
                         setting="auto", settings=S)
    assert not startup.hung
    assert startup.reason == "progress 10s ago (no heartbeat yet; timeout 15m00s: startup allowance)"
    explicit = check_hang(now=T0 + 1100, attempt_started_at=T0, heartbeat=beat(), slowest_step_s=None,
                          setting="1m", settings=S)
    assert explicit.hung and explicit.reason.endswith("timeout 1m00s: set by supervision.hang_timeout)")


def test_off_is_never_hung() -> None:
    verdict = check_hang(now=T0 + 10**7, attempt_started_at=T0, heartbeat=None, slowest_step_s=None,
                         setting="off", settings=S)
    assert (verdict.hung, verdict.timeout_s) == (False, None)


def test_update_slowest_step() -> None:
    assert update_slowest_step(None, None) is None
    assert update_slowest_step(None, beat(max_step=None)) is None
    assert update_slowest_step(None, beat(max_step=2.0)) == 2.0
    assert update_slowest_step(3.0, beat(max_step=2.0)) == 3.0
    assert update_slowest_step(3.0, beat(max_step=4.5)) == 4.5


def test_small_settings_for_end_to_end_tests() -> None:
    fast = HangConfig(startup_allowance=5.0, phase_allowance=3.0, multiple=5.0, min_timeout=1.0,
                        heartbeat_interval=0.2)
    assert hang_timeout("auto", beat(max_step=0.01), 0.01, fast) == 1.0
    assert hang_timeout("auto", beat(max_step=0.5), 0.5, fast) == 2.7
    assert hang_timeout("auto", None, None, fast) == 5.0


# ------------------------------------------------------------------------------------------- stack dumps

HUNG_TRAINER = textwrap.dedent("""
    import faulthandler, signal, sys, threading, time

    stacks = open(sys.argv[1], "a")
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True)

    def data_loader_worker():
        while True:
            time.sleep(0.01)

    threading.Thread(target=data_loader_worker, name="loader", daemon=True).start()

    def stuck_in_allreduce():
        print("ready", flush=True)  # from inside: the stack we ask for is this one
        time.sleep(600)

    stuck_in_allreduce()
""")


def _start(tmp_path: Path, script: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "stacks.txt")], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_dump_stacks_of_a_real_hung_process(tmp_path: Path) -> None:
    proc = _start(tmp_path, HUNG_TRAINER)
    try:
        files = dump_stacks(proc.pid, tmp_path, timeout_s=10)
        assert proc.poll() is None  # the dump does not stop the trainer: the daemon's stop routine does
    finally:
        proc.kill()
        proc.wait()
    stacks = tmp_path / "stacks.txt"
    assert stacks in files
    text = stacks.read_text()
    assert text.count("hread 0x") >= 2  # "Current thread 0x..." and "Thread 0x..."
    assert 'File "<string>"' in text
    assert "stuck_in_allreduce" in text and "data_loader_worker" in text


def test_no_sigusr2_to_a_process_without_a_handler(tmp_path: Path) -> None:
    # SIGUSR2's default action would kill it: a trainer that has not registered faulthandler yet
    proc = _start(tmp_path, "import time; print('ready', flush=True); time.sleep(600)")
    try:
        files = dump_stacks(proc.pid, tmp_path, timeout_s=1)
        time.sleep(0.1)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert tmp_path / "stacks.txt" not in files


def test_dump_stacks_of_a_vanished_process(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    assert dump_stacks(proc.pid, tmp_path, timeout_s=1) in ([], [tmp_path / "py-spy.txt"])


def test_py_spy_dump_when_installed(tmp_path: Path) -> None:
    import shutil

    if shutil.which("py-spy") is None:
        pytest.skip("py-spy is not installed (optional; dump_stacks then relies on faulthandler alone)")
    proc = _start(tmp_path, HUNG_TRAINER)
    try:
        files = dump_stacks(proc.pid, tmp_path, timeout_s=20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    pyspy = tmp_path / "py-spy.txt"
    assert pyspy.exists()
    if pyspy not in files:
        pytest.skip(f"py-spy could not attach here (ptrace not allowed): {pyspy.read_text().strip()[-200:]}")
    assert "stuck_in_allreduce" in pyspy.read_text()
