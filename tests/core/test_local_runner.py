"""The local runner for real: an attempt monitor and a real "trainer" process, real signals, real pidfds."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from supervisor.runners.base import AttemptRef, AttemptSpec, LaunchRefused, Observation, Phase, RunnerNotice
from supervisor.runners.local import LocalRunner
from tests.support.harness import REPO


def _spec(tmp_path: Path, code: str, attempt: int = 1) -> AttemptSpec:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return AttemptSpec(job_id="job-1", attempt=attempt, command=(sys.executable, "-c", code), env=env,
                       workdir=str(tmp_path), attempt_dir=tmp_path / "attempts" / str(attempt),
                       lock_path=tmp_path / "job.lock")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _until(runner: LocalRunner, ref: AttemptRef, phase: Phase, timeout: float = 60.0) -> Observation:
    deadline = time.monotonic() + timeout
    while True:
        seen = runner.observe(ref)
        if seen.phase is phase:
            return seen
        assert time.monotonic() < deadline, f"attempt never reached {phase}: {seen}"
        time.sleep(0.05)


def test_launch_observe_stop_and_forget(tmp_path: Path) -> None:
    notices: list[RunnerNotice] = []
    ended = threading.Event()

    def notify(notice: RunnerNotice) -> None:
        notices.append(notice)
        ended.set()

    runner = LocalRunner(tmp_path, notify)
    try:
        fds_before = _open_fds()
        spec = _spec(tmp_path, "import time; time.sleep(60)")
        state = runner.launch(spec)
        assert state["monitor_pid"] and state["trainer_pid"] is None
        ref = AttemptRef("job-1", 1, spec.attempt_dir, state)

        running = _until(runner, ref, Phase.RUNNING)
        assert running.trainer_pid and running.state["pgid"] == running.trainer_pid
        ref = AttemptRef("job-1", 1, spec.attempt_dir, running.state)

        # the monitor holds the job's lock: a second trainer of the job is refused
        with pytest.raises(LaunchRefused) as refused:
            runner.launch(_spec(tmp_path, "pass", attempt=2))
        assert refused.value.retry

        runner.graceful_stop(ref)  # SIGTERM to the trainer: python's default action ends it
        assert ended.wait(30), "no notice when the attempt ended"
        assert notices == [RunnerNotice("job-1", "ended")]
        seen = runner.observe(ref)
        assert seen.phase is Phase.ENDED and seen.exit is not None
        assert (seen.exit.signal, seen.exit.exit_code) == ("SIGTERM", None)

        runner.forget("job-1")
        assert _open_fds() == fds_before  # every pidfd of the job is closed
    finally:
        runner.close()


def test_kill_takes_the_whole_tree_of_a_trainer_that_ignores_sigterm(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    spec = _spec(tmp_path, code)
    ref = AttemptRef("job-1", 1, spec.attempt_dir, runner.launch(spec))
    try:
        running = _until(runner, ref, Phase.RUNNING)
        ref = AttemptRef("job-1", 1, spec.attempt_dir, running.state)
        deadline = time.monotonic() + 30
        while b"up" not in (spec.attempt_dir / "stdout.log").read_bytes():  # its handler is in place
            assert time.monotonic() < deadline
            time.sleep(0.05)
        runner.graceful_stop(ref)
        time.sleep(0.3)
        assert runner.observe(ref).phase is Phase.RUNNING  # SIGTERM ignored
        assert running.trainer_pid in runner.kill(ref)
        seen = _until(runner, ref, Phase.ENDED)
        assert seen.exit is not None and seen.exit.signal == "SIGKILL"
    finally:
        pid = ref.state.get("trainer_pid")
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        runner.close()


def test_forget_closes_the_pidfds_of_a_job_whose_attempt_still_runs(tmp_path: Path) -> None:
    runner = LocalRunner(tmp_path, lambda notice: None)
    spec = _spec(tmp_path, "import time; time.sleep(60)")
    fds_before = _open_fds()
    ref = AttemptRef("job-1", 1, spec.attempt_dir, runner.launch(spec))
    try:
        running = _until(runner, ref, Phase.RUNNING)  # observe pins the monitor with a pidfd, too
        ref = AttemptRef("job-1", 1, spec.attempt_dir, running.state)
        assert _open_fds() >= fds_before + 2  # the exit watcher's pidfd and the liveness handle
        runner.forget("job-1")
        assert _open_fds() == fds_before
    finally:
        runner.kill(ref)
        runner.close()


def test_two_ranks_started_stacks_from_each_stop_through_the_monitor_and_kill(tmp_path: Path) -> None:
    """A 2-rank attempt of stand-in ranks (tests/support/fake_rank.py): what the daemon asks of every rank."""
    from dataclasses import replace

    from supervisor.jobfiles.monitorfiles import read_monitor_exit
    from supervisor.runners.base import RankLayout

    runner = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)
    attempt_dir = tmp_path / "attempts" / "1"
    spec = replace(_spec(tmp_path, ""), ranks=RankLayout(2, (0, 1)),
                   command=(sys.executable, str(REPO / "tests" / "support" / "fake_rank.py"), str(attempt_dir)))
    try:
        state = runner.launch(spec)
        assert state["world_size"] == 2
        ref = AttemptRef("job-1", 1, spec.attempt_dir, state)
        deadline = time.monotonic() + 30
        while not all((attempt_dir / f"env.rank{r}.json").exists() for r in (0, 1)):
            assert time.monotonic() < deadline, "the ranks did not start"
            time.sleep(0.02)
        seen = runner.observe(ref)
        assert seen.phase is Phase.RUNNING and len(seen.state["rank_pids"]) == 2
        assert seen.state["rank_pids"][0] == seen.trainer_pid
        ref = AttemptRef("job-1", 1, spec.attempt_dir, seen.state)

        files = runner.dump_stacks(ref, timeout_s=10)
        assert sorted(f.name for f in files if f.name.startswith("stacks")) == ["stacks.rank1.txt", "stacks.txt"]

        runner.graceful_stop(ref)  # to the monitor, which forwards it to both ranks
        ended = _until(runner, ref, Phase.ENDED, timeout=30)
        assert ended.exit is not None and [(e.rank, e.exit_code) for e in ended.exit.ranks] == [(0, 143), (1, 143)]
        assert all((attempt_dir / f"term.rank{r}").exists() for r in (0, 1))
        end = read_monitor_exit(attempt_dir / "monitor-exit.json")
        assert end is not None and end.world_size == 2
        assert runner.kill(ref) == []  # nothing of it is left to kill
    finally:
        runner.close()
