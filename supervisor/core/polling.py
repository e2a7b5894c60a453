"""The poll: look at one job and act (launch, notice a start or an end, stop, escalate, keep a standby)."""

from __future__ import annotations

import logging
from pathlib import Path

from supervisor.core.context import CoreContext
from supervisor.core.elastic import Growing
from supervisor.core.ending import Ending
from supervisor.core.file_waits import poll_or_wait
from supervisor.core.following import Following
from supervisor.core.launching import Launching
from supervisor.core.rank_files import attempt_heartbeat
from supervisor.core.rank_watch import RankWatch
from supervisor.core.runner_set import RunnerSet
from supervisor.core.standby_keeping import StandbyKeeper
from supervisor.core.stopping import Stopping
from supervisor.errors import SupervisorError
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.budget import budget_spent
from supervisor.rules.causes import Cause
from supervisor.rules.hang import check_hang, update_slowest_step
from supervisor.rules.states import JobState
from supervisor.runners.base import Phase
from supervisor.runners.registry import job_world_size
from supervisor.store import AttemptRow, JobRow

log = logging.getLogger("ml_supervisor")


class Polling:
    """``tick`` polls every unfinished job; notices and timers poll one (``poll_job``)."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, *, launching: Launching, stopping: Stopping,
                 ending: Ending, keeper: StandbyKeeper, following: Following, rank_watch: RankWatch,
                 growing: Growing) -> None:
        self._ctx = ctx
        self._runners = runners
        self._launching = launching
        self._stopping = stopping
        self._ending = ending
        self._keeper = keeper
        self._following = following
        self._rank_watch = rank_watch
        self._growing = growing

    def tick(self) -> None:
        """Fire due timers and poll every job that is not finished (the safety net under notices and timers)."""
        self._ctx.timers.fire_due()
        self._runners.tick()
        for job in self._ctx.store.list_jobs(states=[s for s in JobState if not s.terminal]):
            try:
                poll_or_wait(self.poll_job, self._ctx, job.id, job)  # files that do not answer: it waits
            except Exception:
                log.exception("error while polling job %s", job.id)

    def poll_job(self, job_id: str, job: JobRow | None = None) -> None:
        """Look at one job and act: launch it, notice its trainer started or ended, stop it, escalate."""
        ctx, store = self._ctx, self._ctx.store
        if job is None:
            try:
                job = store.get_job(job_id)
            except SupervisorError:
                return
        if job.state.terminal:
            return
        now = ctx.clock()
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            if budget_spent(job.budget_s, job.first_started_at, now):
                self._stopping.stop_idle(job, Cause.BUDGET, now)
            elif job.state is JobState.QUEUED or (job.next_start_at or 0) <= now:
                self._launching.launch(job, now)
            return
        attempt = store.last_attempt(job.id)
        if attempt is None or not attempt.live:
            log.error("job %s is %s without a live attempt; relaunching", job.id, job.state.value)
            store.transition(job.id, JobState.BACKOFF, now=now, message="no live attempt found", next_start_at=now)
            return
        runner = self._runners.for_attempt(attempt)
        seen = runner.observe(ctx.attempt_ref(job, attempt))
        if seen.state != attempt.runner_state:
            store.update_attempt(job.id, attempt.n, runner_state=seen.state, pid=seen.trainer_pid)
            attempt = store.last_attempt(job.id) or attempt
        if seen.phase is Phase.ENDED:
            if seen.exit is None:
                runner.kill(ctx.attempt_ref(job, attempt))  # vanished: leave nothing of it behind
            self._ending.on_attempt_end(job, attempt, seen.exit, now)
            return
        if job.state is JobState.STARTING:
            if seen.phase is not Phase.RUNNING:
                if seen.phase is Phase.PENDING and budget_spent(job.budget_s, job.first_started_at, now):
                    # Queue wait counts against the budget: an attempt still queued at the deadline is cancelled.
                    self._stopping.begin_stop(job, Cause.BUDGET,
                                              "the time budget was spent while the attempt was queued", now)
                return
            ctx.tracker.get_or_track(job.id, attempt.n).running_since = now
            job = store.transition(job.id, JobState.RUNNING, now=now, attempt=attempt.n,
                                   message=f"attempt {attempt.n} running (pid {seen.trainer_pid})",
                                   data={"pid": seen.trainer_pid})
        self._following.note_checkpoints(job, attempt)
        if job.state is JobState.STOPPING:
            if job.stop_deadline is not None and now >= job.stop_deadline:
                self._stopping.escalate(job, attempt, now)
            return
        if budget_spent(job.budget_s, job.first_started_at, now):
            self._stopping.begin_stop(job, Cause.BUDGET, "the time budget was spent", now)
            return
        if self._check_health(job, attempt, now):
            return
        self._rank_watch.check(job, attempt, self._ctx.tracker.get_or_track(job.id, attempt.n), now)
        if job.state is JobState.RUNNING and self._growing.check(job, attempt, now):
            return  # elastic DDP: GPUs came back, the attempt stops (after a checkpoint) to relaunch larger
        self._keeper.keep_standby(job, attempt)

    def _check_health(self, job: JobRow, attempt: AttemptRow, now: float) -> bool:
        """Hang detection: no progress in the heartbeat for longer than the attempt's timeout (True: hung)."""
        ctx = self._ctx
        layout = JobLayout(Path(job.job_dir)).attempt(attempt.n)
        tracked = ctx.tracker.get_or_track(job.id, attempt.n)
        if tracked.world_size is None:
            tracked.world_size = attempt.world_size or job_world_size(ctx.job_config(job))
        beat = attempt_heartbeat(layout, tracked.world_size)  # several ranks: the slowest one's
        tracked.slowest_step = update_slowest_step(tracked.slowest_step, beat)
        if tracked.hang_setting is None:  # OmegaConf access is slow; read the setting once per attempt
            tracked.hang_setting = str(ctx.job_config(job).supervision.hang_timeout)
        started = max(attempt.started_at, tracked.running_since or attempt.started_at)
        verdict = check_hang(now=now, attempt_started_at=started, heartbeat=beat,
                             slowest_step_s=tracked.slowest_step, setting=tracked.hang_setting,
                             settings=ctx.settings.hang)
        if verdict.hung:
            self._stopping.begin_stop(job, Cause.HANG, f"hang: {verdict.reason}", now)
        return verdict.hung
