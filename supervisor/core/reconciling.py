"""Reconcile on start: make the store true again after a daemon restart or a reboot.

``classify`` is pure: from what the store recorded and what the runner sees
now, each live attempt is adopted (still running), collected (it ended while
the daemon was away), rebooted (it ran in an earlier boot) or vanished (gone
without an exit status); one whose launch the daemon never finished recording
(``Launching.launch`` records the attempt before it starts anything) is
interrupted: whatever of it may run is killed and it ends as a crash.
``Reconciling.reconcile`` applies the verdicts.
"""

from __future__ import annotations

import logging
from enum import StrEnum

from supervisor.alerts.events import RebootAlert
from supervisor.core.context import CoreContext
from supervisor.core.ending import Ending
from supervisor.core.file_waits import or_wait
from supervisor.core.following import Following
from supervisor.core.runner_set import RunnerSet
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import LIVE_STATES, JobState
from supervisor.runners.base import Observation, Phase
from supervisor.store import AttemptRow, JobRow, OutboxAlert

log = logging.getLogger("ml_supervisor")


class Verdict(StrEnum):
    ADOPT = "adopt"
    COLLECT = "collect"
    REBOOTED = "rebooted"
    VANISHED = "vanished"
    INTERRUPTED = "interrupted"  # the daemon died while launching it: it may run, unknown to any row's state


# A job waits in these states before its launch; a live attempt of one was being launched when the daemon died.
_LAUNCHING_FROM = (JobState.QUEUED, JobState.BACKOFF)
INTERRUPTED_DETAIL = "launch interrupted: the daemon stopped while starting this attempt"


def launch_interrupted(job: JobRow, attempt: AttemptRow) -> bool:
    """Whether the daemon died between recording ``attempt`` and recording it started (pure).

    The launch records the row (runner state empty), starts it, stores the runner's state, then moves
    the job to ``starting``: an empty state, or a job not yet live, means the end of that never happened.
    """
    return attempt.live and (not attempt.runner_state or job.state in _LAUNCHING_FROM)


def classify(seen: Observation, recorded_boot_id: str | None, current_boot_id: str) -> Verdict:
    """What to do with an attempt the store says is live and launched (pure)."""
    boot = seen.boot_id or recorded_boot_id
    if boot and boot != current_boot_id:
        return Verdict.REBOOTED  # the node rebooted: whatever the files say, that trainer is gone
    if seen.phase is Phase.ENDED:
        return Verdict.COLLECT if seen.exit is not None else Verdict.VANISHED
    return Verdict.ADOPT


class Reconciling:
    """Apply ``classify`` to every job the store says is live."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, ending: Ending, following: Following) -> None:
        self._ctx = ctx
        self._runners = runners
        self._ending = ending
        self._following = following

    def reconcile(self) -> dict[str, Verdict]:
        """Adopt, collect or relaunch every live attempt; the verdict per job."""
        store = self._ctx.store
        now = self._ctx.clock()
        previous_boot = store.get_meta("boot_id")
        verdicts: dict[str, Verdict] = {}
        seen_attempts: list[tuple[JobRow, AttemptRow, Observation]] = []
        for job in store.list_jobs(states=[*LIVE_STATES, *_LAUNCHING_FROM]):
            attempt = store.last_attempt(job.id)
            if attempt is None or not attempt.live:
                continue
            if launch_interrupted(job, attempt):
                verdicts[job.id] = Verdict.INTERRUPTED
                self.end_interrupted_launch(job, attempt, now)
                continue
            seen = self._runners.for_attempt(attempt).observe(self._ctx.attempt_ref(job, attempt))
            verdicts[job.id] = classify(seen, attempt.boot_id, self._ctx.boot_id)
            seen_attempts.append((job, attempt, seen))
        # Every job a reboot hit, known before the first is acted on: each one's reboot alert names them all.
        rebooted = [job_id for job_id, v in verdicts.items() if v is Verdict.REBOOTED]
        reboot_alert = RebootAlert(jobs=rebooted, previous_boot_id=previous_boot, boot_id=self._ctx.boot_id)
        for job, attempt, seen in seen_attempts:
            or_wait(self._ctx, job.id, self._apply, job, attempt, seen, verdicts[job.id], now, reboot_alert)
        store.set_meta("boot_id", self._ctx.boot_id)
        if rebooted:
            log.warning("recovered %d job(s) after a reboot (boot id was %s)", len(rebooted), previous_boot)
        return verdicts

    def _apply(self, job: JobRow, attempt: AttemptRow, seen: Observation, verdict: Verdict, now: float,
               reboot_alert: RebootAlert) -> None:
        store = self._ctx.store
        runner = self._runners.for_attempt(attempt)
        if seen.state != attempt.runner_state:
            store.update_attempt(job.id, attempt.n, runner_state=seen.state, pid=seen.trainer_pid)
            attempt = store.last_attempt(job.id) or attempt
        ref = self._ctx.attempt_ref(job, attempt)
        if verdict is Verdict.REBOOTED:
            runner.kill(ref)  # signals only what it proves ours: after a real reboot, nothing
            # The reboot alert is committed with the event (the outbox) and sent with the restart's or the
            # ending's alert that on_attempt_end commits next: a daemon killed in between sends both at its start.
            store.add_event(job.id, EventKind.REBOOT, "the node rebooted while the job ran", now=now,
                            attempt=attempt.n, alert=OutboxAlert(reboot_alert.event, reboot_alert.details()))
            self._ending.on_attempt_end(job, attempt, seen.exit, now, intent=Cause.REBOOT,
                                intent_detail="the node rebooted")
        elif verdict is Verdict.COLLECT:
            store.add_event(job.id, EventKind.COLLECTED, f"attempt {attempt.n} ended while the daemon was away",
                            now=now, attempt=attempt.n)
            self._ending.on_attempt_end(job, attempt, seen.exit, now)
        elif verdict is Verdict.ADOPT:
            runner.adopt(ref)
            self._following.follow(job, attempt.n)
            store.add_event(job.id, EventKind.ADOPTED, f"adopted attempt {attempt.n} (pid {attempt.pid})",
                            now=now, attempt=attempt.n)
            log.info("job %s: adopted running attempt %d", job.id, attempt.n)
        else:
            runner.kill(ref)  # leave nothing of it behind
            self._ending.on_attempt_end(job, attempt, None, now)

    def end_interrupted_launch(self, job: JobRow, attempt: AttemptRow, now: float) -> None:
        """Kill whatever of a half-recorded launch may run (found by identity), then end it as a crash.

        Killed before the next launch: its monitor holds the job's lock, which would keep the next
        attempt waiting (never two trainers of one job), and its trainer would write into a directory
        the daemon no longer follows. The next attempt is numbered after this one.
        """
        store = self._ctx.store
        runner = self._runners.for_attempt(attempt)
        killed = runner.kill(self._ctx.attempt_ref(job, attempt))
        store.add_event(job.id, EventKind.LAUNCH_FAILED, f"attempt {attempt.n} was being started when the daemon "
                        f"stopped: killed {len(killed)} process(es) of it", now=now, attempt=attempt.n,
                        data={"pids": killed})
        log.warning("job %s: attempt %d was being launched when the daemon stopped (killed %s)", job.id,
                    attempt.n, killed or "nothing")
        if job.state in _LAUNCHING_FROM:  # the end of an attempt is decided for a live job
            job = store.transition(job.id, JobState.STARTING, now=now, attempt=attempt.n, kind=EventKind.LAUNCH,
                                   message=f"attempt {attempt.n} was being started", next_start_at=None,
                                   wait_reason=None, first_started_at=job.first_started_at or attempt.started_at)
        # What it wrote still counts (a completed exit record wins over the intent): else a crash, and the policy.
        self._ending.on_attempt_end(job, attempt, None, now, intent=Cause.CRASH, intent_detail=INTERRUPTED_DETAIL)
