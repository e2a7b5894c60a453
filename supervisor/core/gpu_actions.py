"""GPU actions: open the GPU monitor, act on its events, let the operator clear a quarantine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from supervisor.alerts.events import GpuFaultAlert
from supervisor.core.context import CoreContext
from supervisor.core.outbox import Outbox
from supervisor.core.runner_set import RunnerSet
from supervisor.core.stopping import Stopping
from supervisor.gpu import GpuEvent, GpuMonitor, GpuThresholds, open_backend
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.settings import DaemonSettings
from supervisor.store import OutboxAlert


def open_gpu_monitor(settings: DaemonSettings, state_dir: Path,
                     on_event: Callable[[GpuEvent], None]) -> GpuMonitor | None:
    """Start watching this node's GPUs (NVML, or the simulation); None when there is no NVML."""
    backend = open_backend()
    if backend is None:
        return None
    gpu = settings.gpu
    thresholds = GpuThresholds(temperature_degraded_c=gpu.temperature_degraded_c,
                               temperature_failed_c=gpu.temperature_failed_c)
    monitor = GpuMonitor(backend, state_dir / "gpu-quarantine.json", thresholds, on_event=on_event,
                         poll_interval_s=gpu.poll_interval)
    monitor.start()
    return monitor


def close_gpu_monitor(monitor: GpuMonitor | None) -> None:
    """Stop the monitor's thread and close NVML."""
    if monitor is not None:
        monitor.stop()
        monitor.backend.close()


class GpuActions:
    """The core's answers to GPU health events."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet, stopping: Stopping, outbox: Outbox) -> None:
        self._ctx = ctx
        self._runners = runners
        self._stopping = stopping
        self._outbox = outbox

    def clear_gpu(self, index: int) -> bool:
        """Lift a GPU's quarantine (operator's call) and let waiting jobs try again."""
        if self._ctx.gpus is None:
            return False
        cleared = self._ctx.gpus.clear(index)
        self._ctx.store.add_event(None, EventKind.GPU, f"gpu {index}: quarantine cleared by the operator",
                                  data={"index": index, "cleared": cleared})
        self._ctx.wake_queued()
        self._wake_running()  # an elastic job running shrunk grows back onto it (core/elastic.py)
        return cleared

    def _wake_running(self) -> None:
        for job in self._ctx.store.list_jobs(states=[JobState.RUNNING]):
            self._ctx.wake_job(job.id)

    def on_gpu_event(self, event: GpuEvent) -> None:
        """Act on a GPU event (loop thread): stop the attempts of a failed GPU, checkpoint on a degraded one."""
        ctx, store = self._ctx, self._ctx.store
        now = ctx.clock()
        busy = ctx.gpu_jobs()
        job_id = busy.get(event.index) if event.index is not None else None
        data = {"index": event.index, "kind": event.kind, "health": event.health, "xid": event.xid,
                "application": event.application, "quarantined": event.quarantined}
        if event.application:
            # the job's own error (e.g. Xid 13/31/43): recorded against the job, the GPU stays in service
            store.add_event(job_id, EventKind.XID, f"gpu {event.index}: {event.reason}", now=now, data=data)
            return
        store.add_event(job_id, EventKind.GPU, event.reason, now=now, data=data)
        if event.health == "healthy":
            ctx.wake_queued()
            self._wake_running()
            return
        if job_id is None:
            return
        job = store.get_job(job_id)
        attempt = store.last_attempt(job_id)
        if event.health == "failed" and job.state in (JobState.RUNNING, JobState.STARTING):
            what = GpuFaultAlert(gpu=event.index, fault=event.reason, quarantined=event.quarantined,
                                 attempt=attempt.n if attempt else None)
            # committed with the stop (the outbox): a daemon killed before sending it sends it at its next start
            self._stopping.begin_stop(job, Cause.GPU_FAULT, f"gpu fault: {event.reason}", now,
                                      alert=OutboxAlert(what.event, what.details()))
            self._outbox.send_pending()
        elif event.health == "degraded" and attempt is not None and attempt.live and attempt.pid:
            # the trainer saves a checkpoint at its next step and goes on, so less is lost if the GPU fails
            self._runners.for_attempt(attempt).request_checkpoint(ctx.attempt_ref(job, attempt))
            store.add_event(job_id, EventKind.CHECKPOINT_REQUESTED, f"asked for a checkpoint: {event.reason}",
                            now=now, attempt=attempt.n)
