"""Stopping an attempt: a graceful stop with a grace period, then escalation to a kill.

The intent of a stop (hang, GPU fault, budget, user stop or restart) is the
cause the attempt will end with; what follows is the restart policy's call,
never a second copy of it.
"""

from __future__ import annotations

import logging

from supervisor.config import parse_duration
from supervisor.core.context import CoreContext
from supervisor.core.ending import Ending
from supervisor.core.runner_set import RunnerSet
from supervisor.core.timers import TimerKind
from supervisor.rules import policy as restart_policy
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.store import AttemptRow, JobRow, OutboxAlert

log = logging.getLogger("ml_supervisor")

STACK_DUMP_TIMEOUT_S = 5.0
# A hung or GPU-stuck trainer cannot act on SIGTERM (its main thread is blocked): no long wait.
STUCK_GRACE_S = 5.0
STUCK_CAUSES = (Cause.HANG, Cause.GPU_FAULT)


def stop_grace(intent: Cause, configured_s: float) -> float:
    """Seconds between the graceful stop and the kill."""
    return min(configured_s, STUCK_GRACE_S) if intent in STUCK_CAUSES else configured_s


class Stopping:
    """Begin a graceful stop; escalate when its grace period is over."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, ending: Ending) -> None:
        self._ctx = ctx
        self._runners = runners
        self._ending = ending

    def begin_stop(self, job: JobRow, intent: Cause, detail: str, now: float,
                   alert: OutboxAlert | None = None) -> JobRow:
        """Stop the job's live attempt gracefully; the job is ``stopping`` until the attempt ends.

        ``alert``: what the stop owes the user (a GPU fault), committed with it (the outbox).
        """
        store = self._ctx.store
        attempt = store.last_attempt(job.id)
        grace = stop_grace(intent, parse_duration(self._ctx.job_config(job).supervision.stop_grace))
        if attempt is not None and attempt.live:
            attempt = self._refresh(job, attempt)
            self._before_stop(job, attempt, intent)
            self._runners.for_attempt(attempt).graceful_stop(self._ctx.attempt_ref(job, attempt))
        job = store.transition(job.id, JobState.STOPPING, now=now, message=f"stopping: {detail}",
                               attempt=attempt.n if attempt else None, stop_intent=intent,
                               stop_deadline=now + grace, detail=detail, data={"intent": intent}, alert=alert)
        self._ctx.timers.schedule(job.id, TimerKind.ESCALATE, now + grace)
        log.info("job %s: stopping (%s)", job.id, detail)
        return job

    def stop_idle(self, job: JobRow, intent: Cause, now: float) -> JobRow:
        """Stop a job that has no attempt running (queued or in backoff): the policy says how it ends."""
        policy = restart_policy.RestartPolicy.from_config(self._ctx.job_config(job).supervision)
        decision = restart_policy.decide_terminal(intent, policy)
        assert decision.state is not None and decision.end_reason is not None
        return self._ending.finish(job, decision.state, decision.end_reason, decision.message, now)

    def escalate(self, job: JobRow, attempt: AttemptRow, now: float) -> None:
        """The grace period is over: kill every process of the attempt (its end is collected as usual)."""
        victims = self._runners.for_attempt(attempt).kill(self._ctx.attempt_ref(job, attempt))
        store = self._ctx.store
        store.update_job(job.id, now=now, stop_deadline=None)
        store.add_event(job.id, EventKind.SIGKILL, f"grace period over: SIGKILL to {len(victims)} processes",
                        now=now, attempt=attempt.n, data={"pids": victims})

    def _before_stop(self, job: JobRow, attempt: AttemptRow, intent: Cause) -> None:
        """Before the graceful stop of a hang: save every thread's stack (the runner knows how)."""
        if intent is not Cause.HANG:
            return
        # Bounded: faulthandler writes from C at once; the loop must not stall long for one job.
        files = self._runners.for_attempt(attempt).dump_stacks(self._ctx.attempt_ref(job, attempt),
                                                               STACK_DUMP_TIMEOUT_S)
        names = ", ".join(f.name for f in files) or "none"
        self._ctx.store.add_event(job.id, EventKind.STACKS, f"saved stacks: {names}", attempt=attempt.n,
                                  data={"files": [str(f) for f in files]})

    def _refresh(self, job: JobRow, attempt: AttemptRow) -> AttemptRow:
        """Persist what the runner learned of a starting attempt (its trainer's pid) before signalling it."""
        seen = self._runners.for_attempt(attempt).observe(self._ctx.attempt_ref(job, attempt))
        if seen.state != attempt.runner_state:
            self._ctx.store.update_attempt(job.id, attempt.n, runner_state=seen.state, pid=seen.trainer_pid)
            attempt = self._ctx.store.last_attempt(job.id) or attempt
        return attempt
