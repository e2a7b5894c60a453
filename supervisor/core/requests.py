"""What people ask of the core: submit a job, stop it, restart it."""

from __future__ import annotations

import logging
import shutil

from supervisor.core.context import CoreContext
from supervisor.core.placement import Placement
from supervisor.core.standby_keeping import StandbyKeeper
from supervisor.core.stopping import Stopping
from supervisor.core.submit import SubmitRequest
from supervisor.errors import InvalidTransition
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.store import JobRow

log = logging.getLogger("ml_supervisor")


class Requests:
    """Submit / stop / restart, on the loop thread (``Supervisor`` runs the slow part of submit off it)."""

    def __init__(self, ctx: CoreContext, keeper: StandbyKeeper, placement: Placement, stopping: Stopping) -> None:
        self._ctx = ctx
        self._keeper = keeper
        self._placement = placement
        self._stopping = stopping

    def start_first_standby_unless_queued(self, job: JobRow) -> bool:
        """Attempt 1 as a standby while submit's import check runs; not for a job that will wait for GPUs."""
        if not self._placement.can_place_now(job):
            return False  # it will wait for GPUs: a standby would only hold memory meanwhile
        return self._keeper.start_first_standby(job)

    def drop_first_standby(self, job_id: str) -> None:
        """The submit was refused: undo ``start_first_standby_unless_queued``."""
        self._keeper.drop_first_standby(job_id)

    def register(self, job: JobRow, req: SubmitRequest) -> JobRow:
        """Insert a checked job and queue it."""
        try:
            self._ctx.store.insert_job(job, message=f"submitted {job.name} from {job.config_source}",
                                       data={"config_source": job.config_source, "overrides": req.overrides,
                                             **req.origin})
        except BaseException:
            # Not inserted (one transaction): no job, so neither its attempt-1 standby nor its dir may stay.
            self._keeper.drop_first_standby(job.id)
            shutil.rmtree(job.job_dir, ignore_errors=True)
            raise
        log.info("job %s submitted (%s)", job.id, job.config_source)
        self._ctx.wake_job(job.id)
        return job

    def stop_job(self, job_id: str, *, intent: Cause = Cause.USER_STOP, detail: str = "stopped by the user") -> JobRow:
        """Stop a job for good (gracefully: the runner's graceful stop, a grace period, a kill)."""
        job = self._ctx.store.get_job(job_id)
        now = self._ctx.clock()
        if job.state.terminal:
            raise InvalidTransition(f"job {job.id} is already {job.state.value}")
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            return self._stopping.stop_idle(job, Cause(intent), now)
        if job.state is JobState.STOPPING:
            return job
        return self._stopping.begin_stop(job, Cause(intent), detail, now)

    def restart_job(self, job_id: str) -> JobRow:
        """Relaunch from the best checkpoint: a live job is stopped first; a finished one is queued again."""
        store = self._ctx.store
        job = store.get_job(job_id)
        now = self._ctx.clock()
        if job.state.terminal:
            job = store.transition(job.id, JobState.QUEUED, now=now, message="queued again by the user",
                                   kind=EventKind.REQUEUED, end_reason=None, ended_at=None, next_start_at=None)
            self._ctx.wake_job(job.id)
            return job
        if job.state in (JobState.RUNNING, JobState.STARTING):
            return self._stopping.begin_stop(job, Cause.USER_RESTART, "restart requested by the user", now)
        if job.state is JobState.BACKOFF:
            store.update_job(job.id, now=now, next_start_at=now)
            self._ctx.wake_job(job.id)
        return store.get_job(job.id)

