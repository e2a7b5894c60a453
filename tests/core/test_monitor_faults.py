"""The attempt monitor when its own plumbing fails (issue 11, item 2): never an unrecorded or second trainer.

Disk full is real: the attempt dir lives on a small tmpfs filled to the last
block (mount needs root, as CI and this sandbox have; skipped with the reason
otherwise).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from supervisor.runners.base import AttemptRef, AttemptSpec, LaunchRefused, Phase
from supervisor.runners.local import LocalRunner
from tests.support.full_disk import fill, small_tmpfs
from tests.support.harness import REPO, process_gone

SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with the attempt dir made, filled until a write fails with ENOSPC."""
    with small_tmpfs(tmp_path / "small") as mount:
        (mount / "attempts" / "1").mkdir(parents=True)
        fill(mount)
        yield mount


def _spec(job_dir: Path, pid_file: Path, attempt: int = 1) -> AttemptSpec:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return AttemptSpec(job_id="job-1", attempt=attempt, command=(sys.executable, "-c", SLEEPER, str(pid_file)),
                       env=env, workdir=str(job_dir), attempt_dir=job_dir / "attempts" / str(attempt),
                       lock_path=job_dir.parent / f"{job_dir.name}.lock")


def _pid_from(path: Path, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, "the trainer never started"
        time.sleep(0.05)
    return int(path.read_text())




def _kill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _trainers_with(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (the trainer may die before it can write a pid file)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.info["pid"])
    return found


def test_a_monitor_that_cannot_write_monitor_json_kills_its_trainer(tmp_path: Path, full_disk: Path) -> None:
    pid_file = tmp_path / "trainer.pid"  # the command's unique marker (the trainer may not live to write it)
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    spec = _spec(full_disk, pid_file)
    trainer_pid: int | None = None
    try:
        state = runner.launch(spec)
        assert process_gone(state["monitor_pid"], timeout_s=30.0), "the monitor did not exit"
        deadline = time.monotonic() + 30  # its SIGKILL may land after the monitor is gone, on a loaded box
        while (survivors := _trainers_with(str(pid_file))) and time.monotonic() < deadline:
            time.sleep(0.1)
        trainer_pid = survivors[0] if survivors else None
        assert survivors == [], "the unrecorded trainer runs on"
        seen = runner.observe(AttemptRef("job-1", 1, spec.attempt_dir, state))
        assert seen.phase is Phase.ENDED
        # nothing of the job runs, so the next attempt may start (the lock is free)
        (full_disk / "filler").unlink()
        next_state = runner.launch(_spec(full_disk, tmp_path / "second.pid", attempt=2))
        _kill(_pid_from(tmp_path / "second.pid"))
        assert process_gone(next_state["monitor_pid"], timeout_s=30.0)
    finally:
        _kill(trainer_pid)
        runner.close()


def test_the_lock_stays_taken_while_the_trainer_of_a_killed_monitor_lives(tmp_path: Path) -> None:
    job_dir = tmp_path / "job"
    (job_dir / "attempts").mkdir(parents=True)
    pid_file = tmp_path / "trainer.pid"
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    trainer_pid: int | None = None
    try:
        state = runner.launch(_spec(job_dir, pid_file))
        trainer_pid = _pid_from(pid_file)
        os.kill(state["monitor_pid"], signal.SIGKILL)  # the monitor dies for any reason at all
        assert process_gone(state["monitor_pid"], timeout_s=30.0)
        with pytest.raises(LaunchRefused):  # its trainer still runs: no second one
            runner.launch(_spec(job_dir, tmp_path / "second.pid", attempt=2))
        assert not (tmp_path / "second.pid").exists()
        # the daemon's clean-up of a vanished attempt kills the proven trainer; then the lock is free
        seen = runner.observe(AttemptRef("job-1", 1, job_dir / "attempts" / "1", state))
        assert seen.phase is Phase.ENDED and seen.exit is None
        assert trainer_pid in runner.kill(AttemptRef("job-1", 1, job_dir / "attempts" / "1", seen.state))
        assert process_gone(trainer_pid, timeout_s=30.0)
        second = runner.launch(_spec(job_dir, tmp_path / "second.pid", attempt=2))
        _kill(_pid_from(tmp_path / "second.pid"))
        assert process_gone(second["monitor_pid"], timeout_s=30.0)
    finally:
        _kill(trainer_pid)
        runner.close()
