"""An attempt ended: record how, ask the restart policy, and restart the job or end it for good."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from supervisor.alerts.events import BudgetAlert, CompletedAlert, FailedAlert, HangAlert, RestartAlert, StoppedAlert
from supervisor.core import restart_alerts
from supervisor.core.context import CoreContext
from supervisor.core.outbox import Outbox
from supervisor.core.rank_files import diverged_at, rank_exit_records
from supervisor.core.runner_set import RunnerSet
from supervisor.core.standby_keeping import StandbyKeeper
from supervisor.core.timers import TimerKind
from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best
from supervisor.jobfiles.safe_read import is_regular
from supervisor.rules import policy as restart_policy
from supervisor.rules.causes import Cause, EndReason, EventKind
from supervisor.rules.outcome import is_disk_full
from supervisor.rules.rank_outcome import classify_ranks_end
from supervisor.rules.rollback import next_resume, rollback_after
from supervisor.rules.states import JobState
from supervisor.runners.base import AttemptExit
from supervisor.runners.registry import job_world_size
from supervisor.store import AttemptRow, JobRow, OutboxAlert

log = logging.getLogger("ml_supervisor")


class Ending:
    """The end of an attempt (``on_attempt_end``) and of a job (``finish``, ``forget``)."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, outbox: Outbox, keeper: StandbyKeeper) -> None:
        self._ctx = ctx
        self._runners = runners
        self._outbox = outbox
        self._keeper = keeper

    def on_attempt_end(self, job: JobRow, attempt: AttemptRow, process_exit: AttemptExit | None, now: float, *,
                       intent: Cause | None = None, intent_detail: str | None = None) -> None:
        """Record how the attempt ended, ask the restart policy, and act on its decision."""
        ctx, store = self._ctx, self._ctx.store
        jl = JobLayout(Path(job.job_dir))
        al = jl.attempt(attempt.n)
        world_size = (process_exit.world_size if process_exit is not None
                      else attempt.world_size or job_world_size(ctx.job_config(job)))
        records = rank_exit_records(al, world_size)
        record = records.get(0)
        if intent is None and job.stop_intent:
            intent, intent_detail = Cause(job.stop_intent), job.detail
        # several ranks: the first rank that failed is the cause (the others died of its loss)
        outcome = classify_ranks_end(process_exit, records, intent, intent_detail)
        ended_at = process_exit.ended_at if process_exit and process_exit.ended_at else now
        saves = [e for e in read_json_lines(jl.manifest) if e.get("event") == "save" and e.get("attempt") == attempt.n]
        beat = read_heartbeat(al.heartbeat)
        step = record.global_step if record is not None else (beat.step if beat else None)
        store.update_attempt(job.id, attempt.n, ended_at=ended_at, exit_code=outcome.exit_code,
                             signal=outcome.signal, reason=outcome.cause, detail=outcome.detail,
                             new_checkpoints=len(saves), global_step=step)
        ctx.tracker.end_attempt(job.id)
        self._runners.for_attempt(attempt).forget(job.id)
        ctx.timers.cancel(job.id, TimerKind.ESCALATE)
        ctx.timers.cancel(job.id, TimerKind.STARTED)
        history = [restart_policy.PastAttempt(n=a.n, started_at=a.started_at, ended_at=a.ended_at, cause=a.cause,
                                              new_checkpoints=a.new_checkpoints, disk_full=is_disk_full(a.detail),
                                              diverged_at=diverged_at(jl.attempt(a.n), a.world_size or world_size)
                                              if a.cause == Cause.DIVERGED else None)
                   for a in store.attempts(job.id) if a.n != attempt.n]
        supervision = ctx.job_config(job).supervision
        decision = restart_policy.decide(
            restart_policy.AttemptEnd(cause=outcome.cause, ended_at=ended_at, new_checkpoints=len(saves),
                                      completion_reason=outcome.completion_reason,
                                      disk_full=is_disk_full(outcome.detail), diverged_at=outcome.diverged_at),
            history, now=now, first_started_at=job.first_started_at or attempt.started_at,
            policy=restart_policy.RestartPolicy.from_config(supervision),
            counting_since=store.last_event_time(job.id, EventKind.REQUEUED))
        store.add_event(job.id, EventKind.ATTEMPT_ENDED, f"attempt {attempt.n} ended: {outcome.detail}", now=now,
                        attempt=attempt.n, data={"cause": outcome.cause, "exit_code": outcome.exit_code,
                                                 "signal": outcome.signal, "new_checkpoints": len(saves)})
        log.info("job %s: attempt %d ended (%s: %s) -> %s", job.id, attempt.n, outcome.cause, outcome.detail,
                 decision.message)
        if decision.action != "restart":
            assert decision.state is not None and decision.end_reason is not None
            self.finish(job, decision.state, decision.end_reason, decision.message, now)
            return
        when = now + decision.delay
        # Which checkpoint the relaunch will take (verified again at launch; this is the preview for people).
        rollback = rollback_after(outcome.diverged_at, supervision.divergence)
        preview = next_resume(live_checkpoints(jl.manifest), str(supervision.resume_from), rollback,
                              verify=lambda entry: None).entry
        facts: dict[str, Any] = dict(
            cause=outcome.cause.value, detail=outcome.detail, attempt=attempt.n + 1, restarts=job.restarts + 1,
            max_restarts=int(supervision.max_restarts), delay_s=decision.delay, message=decision.message,
            gpus=attempt.gpus, logs=str(al.stderr), resumed_from=preview.path if preview else None,
            resumed_step=preview.step if preview else None, resumed_score=preview.score if preview else None,
            last_step=step, diverged_at=outcome.diverged_at)
        what = (HangAlert(**facts, stacks=str(al.stacks) if is_regular(al.stacks) else None)
                if outcome.cause is Cause.HANG else RestartAlert(**facts))
        # Committed with the restart (the outbox), then sent: a daemon killed in between sends it at its next start.
        # A backend whose launch decides where the restart runs: held in the event for the launch to tell it.
        at_launch = self._runners.backend(ctx.job_config(job)).restart_alert_at_launch
        job = store.transition(job.id, JobState.BACKOFF, now=now, attempt=attempt.n, kind=EventKind.RESTART,
                               message=decision.message, next_start_at=when, restarts=job.restarts + 1,
                               stop_intent=None, stop_deadline=None, detail=outcome.detail,
                               data={"cause": outcome.cause, "delay": decision.delay,
                                     **(restart_alerts.held(what) if at_launch else {})},
                               alert=None if at_launch else OutboxAlert(what.event, what.details()))
        self._outbox.send_pending()
        if decision.delay > 0:
            ctx.timers.schedule(job.id, TimerKind.BACKOFF, when)
        else:
            ctx.wake_job(job.id)

    def finish(self, job: JobRow, state: JobState, end_reason: str, message: str, now: float) -> JobRow:
        """End the job for good: link its best checkpoint, record it, drop its timers and caches, alert."""
        store = self._ctx.store
        best = self.best_checkpoint(job)
        result = best.path if best else None
        if result:
            _link_best(job, result)
        kind = {JobState.FAILED: FailedAlert, JobState.STOPPED: StoppedAlert}.get(
            state, BudgetAlert if end_reason == EndReason.BUDGET else CompletedAlert)
        what = kind(
            end_reason=str(end_reason), message=message, attempts=len(store.attempts(job.id)), restarts=job.restarts,
            best_checkpoint=result, best_score=best.score if best else None, best_step=best.step if best else None,
            monitor=best.monitor if best else None,
            elapsed_s=(now - job.first_started_at) if job.first_started_at else None, budget_s=job.budget_s)
        job = store.transition(job.id, state, now=now, message=message, end_reason=end_reason,
                               best_checkpoint=result, detail=message, stop_intent=None, stop_deadline=None,
                               next_start_at=None, data={"end_reason": end_reason, "best_checkpoint": result},
                               alert=OutboxAlert(what.event, what.details()))  # committed with the ending
        self.forget(job.id)
        self._outbox.send_pending()
        log.info("job %s: %s (%s)", job.id, state.value, end_reason)
        return job

    def forget(self, job_id: str) -> None:
        """The job finished: cancel its timers, unwatch its files, close every handle on it."""
        self._ctx.timers.cancel_all(job_id)
        if self._ctx.checkpoints is not None:
            self._ctx.checkpoints.unwatch(job_id)
        self._runners.forget(job_id)
        self._runners.release(job_id)
        self._ctx.tracker.forget(job_id)
        self._keeper.drop_standby(job_id)

    def best_checkpoint(self, job: JobRow) -> CheckpointEntry | None:
        """The best live checkpoint of the job's current timeline (a manifest entry), or None."""
        ranked = rank_best(live_checkpoints(JobLayout(Path(job.job_dir)).manifest))
        return ranked[0] if ranked else None


def _link_best(job: JobRow, result: str) -> None:
    """``<job dir>/best.ckpt`` -> the result, replaced atomically."""
    link = Path(job.job_dir) / "best.ckpt"
    try:
        tmp = link.with_name(".best.ckpt.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(result)
        os.replace(tmp, link)
    except OSError as exc:
        log.warning("job %s: cannot link best.ckpt: %s", job.id, exc)
