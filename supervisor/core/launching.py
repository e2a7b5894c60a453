"""Launching an attempt: GPUs, the resume choice, the spec, the record, then the runner (or the job's standby)."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

from omegaconf import DictConfig

from supervisor.access import run_as_for
from supervisor.config import parse_duration
from supervisor.core import restart_alerts
from supervisor.core.context import CoreContext
from supervisor.core.elastic import note_resize
from supervisor.core.elastic_shape import elastic_of, plan_for
from supervisor.core.following import Following
from supervisor.core.outbox import Outbox
from supervisor.core.placement import Placement
from supervisor.core.rank_files import diverged_at
from supervisor.core.reconciling import Reconciling
from supervisor.core.runner_set import RunnerSet
from supervisor.core.spec import attempt_spec
from supervisor.core.standby_keeping import StandbyKeeper
from supervisor.core.timers import TimerKind
from supervisor.jobfiles.deadline import guarded
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.rules.cadence import Cadence, choose_cadence
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.policy import FAILURE_CAUSES
from supervisor.rules.resume import verify_checkpoint
from supervisor.rules.rollback import Rollback, next_resume, rollback_after
from supervisor.rules.states import JobState
from supervisor.runners.base import LaunchRefused
from supervisor.runners.registry import job_world_size
from supervisor.store import AttemptRow, JobRow

log = logging.getLogger("ml_supervisor")

# The monitor reports the trainer's pid within milliseconds: look again this soon rather than at the tick.
STARTED_CHECK_S = 0.2
LAUNCH_FAILED_RETRY_S = 10.0


class Launching:
    """Start the next attempt of a queued or backed-off job."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, keeper: StandbyKeeper, placement: Placement,
                 reconciling: Reconciling, following: Following, outbox: Outbox) -> None:
        self._ctx = ctx
        self._outbox = outbox
        self._runners = runners
        self._keeper = keeper
        self._placement = placement
        self._reconciling = reconciling
        self._following = following

    def launch(self, job: JobRow, now: float) -> None:
        """Record attempt n+1, then start it (recorded first: a daemon killed at any moment leaves a row)."""
        ctx, store = self._ctx, self._ctx.store
        last = store.last_attempt(job.id)
        if last is not None and last.live:
            # An earlier launch of this job raised past its own handling: its row is live and it may have
            # started. End it first, by identity, as reconcile does after a daemon crash (never two trainers).
            self._reconciling.end_interrupted_launch(job, last, now)
            return
        cfg = ctx.job_config(job)
        jl = JobLayout(Path(job.job_dir))
        gpus = self._placement.allocate_gpus(job, now)
        if gpus is None:
            return
        rollback = self._rollback(job, last)
        cadence = self._cadence(job, cfg, now)
        # Checkpoints live in the user's directory, maybe on a mount that stops answering: verified under the deadline.
        choice = next_resume(live_checkpoints(jl.manifest), str(cfg.supervision.resume_from), rollback,
                             verify=lambda entry: guarded(entry.path, lambda: verify_checkpoint(entry)))
        for path, why in choice.skipped:
            store.add_event(job.id, EventKind.CHECKPOINT_REJECTED, f"not resuming from {path}: {why}", now=now,
                            data={"path": path, "why": why})
        n = (last.n if last else 0) + 1
        first_started_at = job.first_started_at or now
        try:
            run_as = run_as_for(job.owner_uid)
        except LookupError as exc:  # the owner was removed: nobody to run it as, never root instead
            self._launch_failed(job, n, str(exc), now)
            return
        spec = attempt_spec(job, cfg, n, choice, backend=self._runners.backend(cfg), gpus=gpus,
                            first_started_at=first_started_at, trainer_module=ctx.settings.trainer_module,
                            boot_id=ctx.boot_id, state_dir=ctx.state_dir, base_env=os.environ, run_as=run_as,
                            rollback=rollback, checkpoint_every=cadence.every_n_train_steps if cadence else None,
                            elastic=(plan := plan_for(cfg, len(gpus))))
        runner = self._runners.for_job(cfg)
        # Record first: the row exists (runner state empty: "maybe started") before any process does, so a
        # daemon killed at any moment leaves a next daemon that knows this attempt (reconcile kills what may
        # run of it and numbers the next attempt after it) rather than an orphan no row names.
        store.insert_attempt(AttemptRow(job_id=job.id, n=n, started_at=now, runner_kind=runner.kind,
                                        boot_id=ctx.boot_id, gpus=list(gpus), resumed_from=choice.path,
                                        world_size=spec.ranks.world_size,
                                        accumulate_grad_batches=plan.accumulate if plan is not None else None))
        try:
            # A standby (imports done, model built) takes the attempt when the job has one; else a cold start.
            state = self._keeper.promote(job, spec)
            if state is None:
                state = runner.launch(spec)
        except LaunchRefused as refused:
            store.delete_attempt(job.id, n)  # refused: nothing was started, the number is free again
            if refused.retry:
                store.update_job(job.id, now=now, wait_reason=refused.reason)
                log.warning("job %s: not launching attempt %d: %s", job.id, n, refused.reason)
                return
            self._launch_failed(job, n, refused.reason, now)
            return
        except OSError as exc:
            store.delete_attempt(job.id, n)  # the spawn (or sbatch) itself failed: nothing runs
            self._launch_failed(job, n, str(exc), now)
            return
        store.update_attempt(job.id, n, runner_state=state)
        elastic = elastic_of(cfg)
        note_resize(ctx, self._outbox, job, last, n, plan, elastic.devices if elastic else 0, now)
        news = self._runners.backend(cfg).launch_news(state)
        for kind, message, data in news.events:  # e.g. a node excluded, a spare used
            store.add_event(job.id, EventKind(kind), message, now=now, attempt=n, data=data)
        resumed = f"from {Path(choice.path).name} ({choice.rule})" if choice.path else "from scratch"
        if news.note:
            resumed += f", {news.note}"
        if rollback is not None:
            resumed += f" after the divergence at step {rollback.diverged_at}" + "".join(
                f", {what}" for what in _changes(rollback))
        # The restart alert a backend held for its launch, told where the attempt went (restart_alerts).
        alert = restart_alerts.owed(store, job, where=news.note)
        job = store.transition(job.id, JobState.STARTING, now=now, attempt=n, kind=EventKind.LAUNCH,
                               message=f"attempt {n} starting {resumed}",
                               data={"resumed_from": choice.path, "rule": choice.rule, "gpus": gpus,
                                     "rollback": asdict(rollback) if rollback is not None else None,
                                     "cadence": cadence.as_dict() if cadence is not None else None,
                                     "world_size": spec.ranks.world_size,
                                     "accumulate_grad_batches": plan.accumulate if plan is not None else None},
                               first_started_at=first_started_at, next_start_at=None, wait_reason=None,
                               stop_intent=None, stop_deadline=None, alert=alert)
        if alert is not None:
            self._outbox.send_pending()
        self._following.follow(job, n)
        ctx.timers.schedule(job.id, TimerKind.STARTED, now + STARTED_CHECK_S)
        self._following.schedule_timers(job)
        log.info("job %s: attempt %d started %s", job.id, n, resumed)

    def _rollback(self, job: JobRow, last: AttemptRow | None) -> Rollback | None:
        """After an attempt whose loss diverged: what the next one rolls back to (None otherwise)."""
        if last is None or last.cause != Cause.DIVERGED:
            return None
        cfg = self._ctx.job_config(job)
        layout = JobLayout(Path(job.job_dir)).attempt(last.n)
        return rollback_after(diverged_at(layout, last.world_size or job_world_size(cfg)), cfg.supervision.divergence)

    def _cadence(self, job: JobRow, cfg: DictConfig, now: float) -> Cadence | None:
        """``checkpoint.every_n_train_steps: auto``: the interval for the next attempt (None: a fixed one).

        From the job's own measurements: what its saves cost (the manifest's ``save_s``), its step time
        (the last attempt's heartbeat) and its failures so far; before any, the trainer's default.
        """
        if cfg.checkpoint.every_n_train_steps != "auto":
            return None
        jl = JobLayout(Path(job.job_dir))
        costs = [e.save_s for e in live_checkpoints(jl.manifest, require_file=False) if e.save_s]
        attempts = self._ctx.store.attempts(job.id)
        beat = read_heartbeat(jl.attempt(attempts[-1].n).heartbeat) if attempts else None
        if not costs or beat is None or not beat.step_time:
            return None  # nothing measured yet: the trainer's default interval
        running = sum((a.ended_at or now) - a.started_at for a in attempts)
        failures = sum(1 for a in attempts if a.cause in FAILURE_CAUSES)
        return choose_cadence(save_s=sorted(costs[-5:])[len(costs[-5:]) // 2], step_s=beat.step_time,
                              running_s=running, failures=failures,
                              assumed_mtbf_s=parse_duration(cfg.checkpoint.assumed_mtbf))

    def _launch_failed(self, job: JobRow, n: int, why: str, now: float) -> None:
        store = self._ctx.store
        # A held restart alert goes now, saying so: a relaunch that keeps failing must not keep it from the user.
        alert = restart_alerts.owed(store, job, not_started=f"cannot start attempt {n}: {why}")
        store.add_event(job.id, EventKind.LAUNCH_FAILED, f"cannot start attempt {n}: {why}", now=now, alert=alert)
        if alert is not None:
            self._outbox.send_pending()
        retry_at = now + LAUNCH_FAILED_RETRY_S
        if job.state is JobState.BACKOFF:  # a relaunch failed: wait again (backoff -> backoff is no transition)
            store.update_job(job.id, now=now, next_start_at=retry_at, detail=f"launch failed: {why}")
        else:
            store.transition(job.id, JobState.BACKOFF, now=now, message=f"launch failed: {why}",
                             next_start_at=retry_at)
        self._ctx.timers.schedule(job.id, TimerKind.BACKOFF, retry_at)


def _changes(rollback: Rollback) -> list[str]:
    """What a rollback attempt changes, for its launch event."""
    changes = [f"skipping {rollback.skip_batches} batches"] if rollback.skip_batches else []
    return changes + ([f"learning rates x{rollback.lr_scale:g}"] if rollback.lr_scale != 1.0 else [])
