"""A job whose files do not answer waits; every other job goes on.

``FileStalled`` (``jobfiles.deadline``: a read, ``stat`` or listing of the job's files that did not answer
within ``file_timeout``, as on a hung NFS mount) raised anywhere in what the loop does for one job (its poll:
the runner's observation, the heartbeat, the exit records, the manifest; reconcile's verdict) ends that
work for that job: nothing is decided on what could not be read. The job's ``wait_reason`` says which file did
not answer, the tick polls it again, and the first poll that reads its files again clears that reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from supervisor.core.context import CoreContext
from supervisor.errors import SupervisorError
from supervisor.jobfiles.deadline import FileStalled
from supervisor.store import JobRow

log = logging.getLogger("ml_supervisor")

WAIT_PREFIX = "the job's files do not answer: "


def or_wait(ctx: CoreContext, job_id: str, fn: Callable[..., Any], *args: Any) -> bool:
    """``fn(*args)``; False when a file of the job did not answer (then the job waits, said why)."""
    try:
        fn(*args)
    except FileStalled as exc:
        _wait(ctx, job_id, exc)
        return False
    return True


def poll_or_wait(poll: Callable[[str, JobRow | None], None], ctx: CoreContext, job_id: str,
                 job: JobRow | None = None) -> None:
    """Poll the job; when its files do not answer it waits, and once they answer again the reason goes."""
    if or_wait(ctx, job_id, poll, job_id, job) and (job is None or _stall_reason(job)):
        _answered(ctx, job_id)


def _stall_reason(job: JobRow) -> bool:
    return (job.wait_reason or "").startswith(WAIT_PREFIX)


def _wait(ctx: CoreContext, job_id: str, exc: FileStalled) -> None:
    store = ctx.store
    try:
        job = store.get_job(job_id)
    except SupervisorError:
        return
    reason = f"{WAIT_PREFIX}{exc.strerror or exc}"
    if job.wait_reason != reason and not job.state.terminal:
        store.update_job(job_id, now=ctx.clock(), wait_reason=reason)
        log.warning("job %s waits: %s", job_id, reason)


def _answered(ctx: CoreContext, job_id: str) -> None:
    store = ctx.store
    try:
        job = store.get_job(job_id)
    except SupervisorError:
        return
    if _stall_reason(job):
        store.update_job(job_id, now=ctx.clock(), wait_reason=None)
        log.info("job %s: its files answer again", job_id)
