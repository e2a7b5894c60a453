"""Where the next attempt runs: healthy, free, clean GPUs, or a reason the job waits in ``queued``."""

from __future__ import annotations

from supervisor.core.context import CoreContext
from supervisor.core.elastic_shape import elastic_of
from supervisor.core.runner_set import RunnerSet
from supervisor.gpu import allocate
from supervisor.rules.causes import EventKind
from supervisor.rules.elastic import choose_plan
from supervisor.rules.states import JobState
from supervisor.store import JobRow


class Placement:
    """GPUs for a job's next attempt (the runner's pre-flight cleans our orphans off them first)."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet) -> None:
        self._ctx = ctx
        self._runners = runners

    def allocate_gpus(self, job: JobRow, now: float) -> list[int] | None:
        """Healthy, free, clean GPUs for the next attempt ([] for a CPU job); None keeps the job queued."""
        n = job.gpus_requested
        if n == 0:
            return []
        gpus_monitor = self._ctx.gpus
        if gpus_monitor is None:
            self.wait(job, now, "no NVML on this node: GPU jobs cannot be placed")
            return None
        busy = self._ctx.gpu_jobs()
        gpus = allocate(n, gpus_monitor.allocatable(), busy)
        elastic = elastic_of(self._ctx.job_config(job)) if gpus is None else None
        if elastic is not None:
            # no replacement free: the largest allowed size that fits and keeps the global batch (rules/elastic.py)
            plan = choose_plan(elastic, sum(1 for g in gpus_monitor.allocatable() if g not in busy))
            gpus = allocate(plan.world_size, gpus_monitor.allocatable(), busy) if plan is not None else None
        if gpus is None:
            free = [g for g in gpus_monitor.allocatable() if g not in busy]
            need = f"{n} (elastic: at least {elastic.min_devices})" if elastic is not None else str(n)
            self.wait(job, now, f"waiting for {need} free healthy GPU{'s' if n > 1 else ''} "
                                f"({len(free)} of {gpus_monitor.count()} free)")
            return None
        store = self._ctx.store
        earlier = [self._ctx.attempt_ref(job, a) for a in store.attempts(job.id)]
        # Short wait inside the loop; a job still blocked is retried at the next tick.
        check = self._runners.for_job(self._ctx.job_config(job)).clean_orphans(gpus, earlier)
        if check.killed:
            store.add_event(job.id, EventKind.PREFLIGHT, f"killed {len(check.killed)} orphan(s) of earlier "
                            f"attempts on GPU {','.join(map(str, gpus))}", now=now, data={"pids": list(check.killed)})
        if not check.ok:
            self.wait(job, now, check.reason)
            return None
        return gpus

    def wait(self, job: JobRow, now: float, reason: str) -> None:
        """Keep (or put) the job in ``queued`` with a reason people can read."""
        store = self._ctx.store
        if job.state is JobState.QUEUED:
            if job.wait_reason != reason:
                store.update_job(job.id, now=now, wait_reason=reason)
                store.add_event(job.id, EventKind.WAITING, reason, now=now)
        else:
            store.transition(job.id, JobState.QUEUED, now=now, message=reason, kind=EventKind.WAITING,
                             wait_reason=reason)

    def can_place_now(self, job: JobRow) -> bool:
        """Whether the job's GPUs are free now (a CPU job: always)."""
        n = job.gpus_requested
        if not n:
            return True
        monitor = self._ctx.gpus
        if monitor is None:
            return False
        busy = self._ctx.gpu_jobs()
        if allocate(n, monitor.allocatable(), busy) is not None:
            return True
        elastic = elastic_of(self._ctx.job_config(job))
        free = sum(1 for g in monitor.allocatable() if g not in busy)
        return elastic is not None and choose_plan(elastic, free) is not None
