"""The loop's timers: budget deadlines, backoff ends, stop escalation, "look again soon".

A timer only wakes a job (the loop polls it and re-checks every condition), so
a late or an extra firing is harmless. Deadlines are read on the injected
clock, not on a timer thread: the loop sleeps until the next one is due, and
tests drive time by hand (a fake clock, then ``tick()``), with no wall-clock
waits. (APScheduler's scheduler, used before, runs on the wall clock only; scheduled
runs use its triggers for the fire times alone, on this clock: ``core/schedule_times.py``.)

A kind with a handler (``handlers``: a scheduled run, keyed by the schedule's id) calls
it with the key instead of waking a job.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum


class TimerKind(StrEnum):
    BUDGET = "budget"  # the job's time budget is spent
    BACKOFF = "backoff"  # the backoff before the next attempt is over
    ESCALATE = "escalate"  # the grace period of a graceful stop is over: kill
    STARTED = "started"  # a launch a moment ago: the trainer has likely started by now
    SCHEDULE = "schedule"  # a scheduled run is due (keyed by the schedule's id; core/schedules.py handles it)


class Timers:
    """One deadline per (job, kind); ``fire_due`` wakes the jobs whose deadlines passed."""

    def __init__(self, clock: Callable[[], float], wake: Callable[[str], None]) -> None:
        self._clock = clock
        self._wake = wake
        self._due: dict[tuple[str, TimerKind], float] = {}
        # kinds whose timers call a handler with their key (on the loop thread) instead of waking a job
        self.handlers: dict[TimerKind, Callable[[str], None]] = {}

    def schedule(self, job_id: str, kind: TimerKind, when: float) -> None:
        """Wake ``job_id`` at ``when`` (replaces the job's earlier timer of this kind)."""
        self._due[(job_id, kind)] = when

    def cancel(self, job_id: str, kind: TimerKind) -> None:
        self._due.pop((job_id, kind), None)

    def cancel_all(self, job_id: str) -> None:
        """Drop every timer of a job (it finished)."""
        for key in [k for k in self._due if k[0] == job_id]:
            del self._due[key]

    def pending(self, job_id: str) -> dict[TimerKind, float]:
        """The job's timers, by kind (for tests and status)."""
        return {kind: when for (jid, kind), when in self._due.items() if jid == job_id}

    def next_due(self) -> float | None:
        """The earliest deadline, or None without timers."""
        return min(self._due.values(), default=None)

    def fire_due(self) -> list[tuple[str, TimerKind]]:
        """Wake every job whose timer is due now; the timers fired."""
        now = self._clock()
        fired = [key for key, when in self._due.items() if when <= now]
        for key in fired:
            del self._due[key]
        for job_id in dict.fromkeys(job_id for job_id, kind in fired if kind not in self.handlers):
            self._wake(job_id)
        for key_id, kind in fired:
            if kind in self.handlers:
                self.handlers[kind](key_id)
        return fired
