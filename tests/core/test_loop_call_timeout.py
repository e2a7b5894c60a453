"""A request the loop did not get to in time never runs later (issue 11, item 4).

A real loop thread, kept busy by a real blocking call; the stop that timed out
must not happen once the loop is free again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from supervisor.core.loop import Loop
from supervisor.core.timers import Timers
from supervisor.errors import CallPending, CallTimedOut


@pytest.fixture
def loop() -> Iterator[Loop]:
    timers = Timers(time.time, lambda job_id: None)
    running = Loop(poll=lambda job_id: None, tick=lambda: None, timers=timers, clock=time.time, tick_interval=0.05)
    running.start_thread()
    yield running
    running.stop()


def _busy(loop: Loop, release: threading.Event) -> threading.Thread:
    """Occupy the loop thread until ``release`` is set."""
    started = threading.Event()

    def block() -> None:
        started.set()
        release.wait(30)

    caller = threading.Thread(target=lambda: loop.call(block, timeout=60))
    caller.start()
    assert started.wait(10)
    return caller


def test_a_call_that_timed_out_in_the_queue_is_cancelled_and_never_runs(loop: Loop) -> None:
    release = threading.Event()
    caller = _busy(loop, release)
    stopped: list[str] = []
    with pytest.raises(CallTimedOut, match="will not run"):
        loop.call(stopped.append, "job-1", timeout=0.2)
    release.set()
    caller.join(10)
    loop.call(lambda: None, timeout=10)  # the loop has handled everything queued before this
    assert stopped == []


def test_a_call_already_running_at_the_timeout_is_reported_pending_and_finishes(loop: Loop) -> None:
    release = threading.Event()
    done: list[str] = []

    def slow_stop(job_id: str) -> str:
        release.wait(30)
        done.append(job_id)
        return job_id

    with pytest.raises(CallPending, match="will finish on its own"):
        loop.call(slow_stop, "job-1", timeout=0.2)
    release.set()
    loop.call(lambda: None, timeout=10)
    assert done == ["job-1"]


def test_a_call_in_time_returns_its_result(loop: Loop) -> None:
    assert loop.call(lambda a, b: a + b, 2, 3, timeout=10) == 5
