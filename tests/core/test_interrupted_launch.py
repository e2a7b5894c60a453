"""A daemon killed in the middle of a launch: the next daemon knows the attempt, kills it, numbers after it.

The fake runner's launch "kills the daemon" (raises ``DaemonDied``, which nothing in the core catches)
right after it has started the attempt's processes: the moment between the spawn and the daemon's
record of it. A new core on the same store then starts as after a real SIGKILL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from supervisor.processes.control import has_env_marker
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.runners.base import OWN_ENV_KEY, AttemptRef, AttemptSpec, Phase, RunnerState
from supervisor.runners.local import LocalRunner
from tests.core.conftest import MakeCore
from tests.support.fake_runner import FakeAttempt, FakeRunner
from tests.support.harness import REPO


class DaemonDied(BaseException):
    """The daemon was SIGKILLed here (a BaseException: no ``except Exception`` of the core takes it)."""


@dataclass
class DyingRunner(FakeRunner):
    """Starts the attempt's processes, then the daemon dies before hearing of it (``die_at_launch``);
    ``kill`` of an attempt ends its processes (they are shared with the next daemon's runner)."""

    die_at_launch: int | None = None
    death: type[BaseException] = DaemonDied

    def launch(self, spec: AttemptSpec) -> RunnerState:
        state = super().launch(spec)
        self.start(spec.job_id, spec.attempt)  # the orphan runs: its trainer has a pid
        if spec.attempt == self.die_at_launch:
            raise self.death
        return state

    def kill(self, ref: AttemptRef) -> list[int]:
        killed = super().kill(ref)
        attempt = self.attempts.get((ref.job_id, ref.attempt))
        if attempt is not None:
            attempt.phase = Phase.ENDED
        return killed


def _running(attempt: FakeAttempt | None) -> bool:
    return attempt is not None and attempt.phase is not Phase.ENDED


def _die_launching(make_core: MakeCore, n: int) -> tuple[str, DyingRunner]:
    """A job whose attempt ``n`` was being launched when its daemon died; the runner it left."""
    runner = DyingRunner(die_at_launch=n)
    core = make_core(runner)
    try:
        core.submit()
        (job,) = core.store.list_jobs()
        if n > 1:  # attempt 1 crashes; the immediate relaunch is the one the daemon dies in
            runner.end(job.id, 1, exit_code=1)
            core.turn()
    except DaemonDied:
        pass
    else:
        raise AssertionError("the launch did not reach the runner")
    (job,) = core.store.list_jobs()
    job_id = job.id
    core.sup.close()  # releases the state dir's lock, as the kernel does for a SIGKILLed daemon
    assert _running(runner.attempts.get((job_id, n))), "the orphan should be running when the daemon dies"
    return job_id, runner


def test_an_attempt_is_recorded_before_it_is_started(make_core: MakeCore) -> None:
    runner = DyingRunner(die_at_launch=1)
    core = make_core(runner)
    with pytest.raises(DaemonDied):
        core.submit()
    (job,) = core.store.list_jobs()
    attempt = core.store.last_attempt(job.id)
    assert attempt is not None and attempt.n == 1 and attempt.live and attempt.runner_state == {}


def test_the_next_daemon_kills_the_orphan_of_an_interrupted_launch_and_numbers_after_it(make_core: MakeCore) -> None:
    job_id, runner = _die_launching(make_core, 1)
    runner.die_at_launch = None
    runner.calls.clear()

    core = make_core(runner)  # the next daemon: same store, same processes
    core.turn()

    assert core.runner.ops("kill")[0] == (job_id, 1)
    assert not _running(runner.attempts[(job_id, 1)]), "the orphan of attempt 1 still runs"
    first, second = core.store.attempts(job_id)
    assert first.reason == Cause.CRASH and first.detail is not None and "launch interrupted" in first.detail
    assert second.n == 2 and core.runner.ops("launch") == [(job_id, 2)], "attempt 1 was launched again"
    assert core.state(job_id) is JobState.STARTING
    assert EventKind.LAUNCH_FAILED in core.events(job_id)
    assert sum(_running(a) for a in runner.attempts.values()) == 1, "two trainers of one job"


def test_a_relaunch_interrupted_in_backoff_ends_as_a_crash_and_restarts_as_the_policy_says(
        make_core: MakeCore) -> None:
    job_id, runner = _die_launching(make_core, 2)
    runner.die_at_launch = None
    runner.calls.clear()

    core = make_core(runner)
    core.turn()

    assert not _running(runner.attempts[(job_id, 2)])
    assert [a.reason for a in core.store.attempts(job_id)] == [Cause.CRASH, Cause.CRASH]
    job = core.job(job_id)
    # the second failure of a streak waits (the first restarts at once): the policy's backoff, counted
    assert job.state is JobState.BACKOFF and job.restarts == 2 and job.next_start_at is not None
    assert core.runner.ops("launch") == []
    core.clock.advance(job.next_start_at - core.clock())
    core.turn()
    assert core.runner.ops("launch") == [(job_id, 3)]
    assert sum(_running(a) for a in runner.attempts.values()) == 1


def test_a_launch_that_raises_unexpectedly_is_ended_by_identity_before_the_next_one(make_core: MakeCore) -> None:
    runner = DyingRunner(die_at_launch=1, death=RuntimeError)
    core = make_core(runner)
    with pytest.raises(RuntimeError):
        core.submit()
    (job,) = core.store.list_jobs()
    runner.die_at_launch = None
    core.tick()
    assert not _running(runner.attempts[(job.id, 1)]) and core.runner.ops("kill") == [(job.id, 1)]
    assert [a.reason for a in core.store.attempts(job.id)] == [Cause.CRASH, None]
    assert core.runner.ops("launch") == [(job.id, 1), (job.id, 2)]
    assert sum(_running(a) for a in runner.attempts.values()) == 1


def test_a_refused_launch_leaves_no_attempt_row(make_core: MakeCore) -> None:
    from supervisor.runners.base import LaunchRefused

    runner = FakeRunner(refuse=LaunchRefused("another trainer of this job still holds its lock", retry=True))
    core = make_core(runner)
    job_id = core.submit()
    assert core.store.attempts(job_id) == [] and core.state(job_id) is JobState.QUEUED
    runner.refuse = None
    core.tick()
    assert [a.n for a in core.store.attempts(job_id)] == [1]


def _wait_for_line(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and text in path.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"{path} never said {text!r}"
        time.sleep(0.05)


def test_the_local_runner_kills_an_unrecorded_attempt_by_identity_and_frees_the_job_lock(tmp_path: Path) -> None:
    """For real: a monitor, its trainer and the trainer's forked worker, known to no state; a stranger
    naming the same attempt dir without our marker is left alone."""
    attempt_dir = tmp_path / "attempts" / "1"
    env = dict(os.environ, PYTHONPATH=str(REPO), **{OWN_ENV_KEY: str(tmp_path)})
    # the trainer forks a worker (like a DataLoader's) that inherits its command line and environment
    code = "import os, time; os.fork(); print('up', flush=True); time.sleep(60)"
    command = (sys.executable, "-c", code, "--attempt-dir", str(attempt_dir))
    spec = AttemptSpec(job_id="job-1", attempt=1, command=command, env=env, workdir=str(tmp_path),
                       attempt_dir=attempt_dir, lock_path=tmp_path / "job.lock")
    stranger_env = {k: v for k, v in env.items() if k != OWN_ENV_KEY}
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--attempt-dir",
                                 str(attempt_dir)], env=stranger_env)
    dead = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)  # the daemon that dies
    state = dead.launch(spec)
    dead.close()
    try:
        _wait_for_line(attempt_dir / "stdout.log", "up")  # printed after the fork: the worker exists
        monitor = psutil.Process(state["monitor_pid"])
        tree = [monitor, *monitor.children(recursive=True)]
        assert len(tree) == 3  # monitor, trainer, worker

        nxt = LocalRunner(tmp_path, lambda notice: None, watch_exits=False)  # the next daemon: no state at all
        killed = nxt.kill(AttemptRef("job-1", 1, attempt_dir, {}))
        assert sorted(killed) == sorted(p.pid for p in tree)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert alive == [], f"survivors: {alive}"
        assert stranger.poll() is None, "a process without our marker was killed"
        # the orphan's monitor held the job lock; with it dead, the next attempt may start
        state2 = nxt.launch(AttemptSpec(job_id="job-1", attempt=2, command=(sys.executable, "-c", "pass"), env=env,
                                        workdir=str(tmp_path), attempt_dir=tmp_path / "attempts" / "2",
                                        lock_path=tmp_path / "job.lock"))
        assert state2["monitor_pid"]
        nxt.close()
    finally:
        stranger.kill()
        stranger.wait()
        for proc in psutil.process_iter():
            if proc.pid != os.getpid() and has_env_marker(proc.pid, OWN_ENV_KEY, str(tmp_path)):
                proc.kill()
