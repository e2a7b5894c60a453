"""Elastic DDP on one node, the daemon's side: telling people about a resize, and growing back.

The rule (``rules/elastic.py``) chooses a world size and its accumulation from numbers,
``elastic_shape.py`` reads them from a job's frozen config (and refuses at submit a config
that cannot keep its global batch); this module tells people about a resize (an event and
an alert at the launch that changes the size), and grows a shrunk job back when GPUs
return: a checkpoint first (SIGUSR1, the trainer goes on), then a graceful stop with cause
``resize`` (restarted at once, never a failure), and the relaunch takes the larger size
(``Placement.allocate_gpus``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from supervisor.alerts.events import ResizeAlert
from supervisor.core.context import CoreContext
from supervisor.core.elastic_shape import elastic_of, resize_text
from supervisor.core.outbox import Outbox
from supervisor.core.runner_set import RunnerSet
from supervisor.core.stopping import Stopping
from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.elastic import ElasticPlan, should_grow
from supervisor.store import AttemptRow, JobRow, OutboxAlert

log = logging.getLogger("ml_supervisor")

# After asking for the checkpoint a grow waits for: stop anyway (the graceful stop saves one too).
GROW_CHECKPOINT_WAIT_S = 120.0


def note_resize(ctx: CoreContext, outbox: Outbox, job: JobRow, last: AttemptRow | None, n: int,
                plan: ElasticPlan | None, devices: int, now: float) -> None:
    """At a launch: when the size differs from the previous attempt's (or a first attempt's from the configured
    one), an event and an alert (the outbox)."""
    if plan is None:
        return
    was = (last.world_size if last is not None else None) or devices
    if plan.world_size == was:
        return
    lost = sorted(set(last.gpus) - set(ctx.gpus.allocatable())) if ctx.gpus is not None and last else []
    text = resize_text(plan, devices, was, lost, first=last is None)
    what = ResizeAlert(message=text, attempt=n, world_size=plan.world_size, previous_world_size=was,
                       configured_world_size=devices, accumulate_grad_batches=plan.accumulate, lost_gpus=lost or None)
    ctx.store.add_event(job.id, EventKind.RESIZE, text, now=now, attempt=n, data=what.details(),
                        alert=OutboxAlert(what.event, what.details()))
    outbox.send_pending()
    log.info("job %s: %s", job.id, text)


class Growing:
    """A running job below its configured size grows back when GPUs return (planned restart, cause ``resize``)."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, stopping: Stopping) -> None:
        self._ctx = ctx
        self._runners = runners
        self._stopping = stopping
        self._asked: dict[str, tuple[int, float, int]] = {}  # job -> (attempt, when asked, its saves then)

    def check(self, job: JobRow, attempt: AttemptRow, now: float) -> bool:
        """Poll of a running attempt: ask for the checkpoint, then stop to grow (True: the stop began)."""
        ctx = self._ctx
        if attempt.world_size is None or attempt.accumulate_grad_batches is None or ctx.gpus is None:
            return False  # not an elastic attempt (only those record an accumulation): no config read per poll
        elastic = elastic_of(ctx.job_config(job))
        if elastic is None or attempt.world_size >= elastic.devices:
            return False
        busy = ctx.gpu_jobs()
        free = [g for g in ctx.gpus.allocatable() if g not in busy]
        plan = should_grow(elastic, attempt.world_size, len(free))
        asked = self._asked.get(job.id)
        if asked is not None and asked[0] != attempt.n:
            asked = None
        if plan is None:
            self._asked.pop(job.id, None)  # the GPUs went again (or to another job): ask again next time
            return False
        saves = _saves(job, attempt.n)
        if asked is None:
            # A checkpoint now, training goes on; the stop follows once it is saved.
            self._runners.for_attempt(attempt).request_checkpoint(ctx.attempt_ref(job, attempt))
            self._asked[job.id] = (attempt.n, now, saves)
            ctx.store.add_event(job.id, EventKind.CHECKPOINT_REQUESTED,
                                f"asked for a checkpoint before growing to {plan.world_size} of "
                                f"{elastic.devices} GPUs", now=now, attempt=attempt.n)
            return False
        if saves <= asked[2] and now - asked[1] < GROW_CHECKPOINT_WAIT_S:
            return False
        self._asked.pop(job.id, None)
        self._stopping.begin_stop(job, Cause.RESIZE, f"growing back to {plan.world_size} of {elastic.devices} "
                                                     f"GPUs ({len(free)} free)", now)
        return True

    def forget(self, job_id: str) -> None:
        self._asked.pop(job_id, None)


def _saves(job: JobRow, n: int) -> int:
    manifest = JobLayout(Path(job.job_dir)).manifest
    return sum(1 for e in read_json_lines(manifest) if e.get("event") == "save" and e.get("attempt") == n)
