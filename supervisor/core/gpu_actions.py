"""GPU actions: start the GPU monitor, act on its events, let the operator clear a quarantine."""

from __future__ import annotations

from supervisor.alerts.events import GpuFaultAlert
from supervisor.core.corebase import CoreBase
from supervisor.gpu import GpuEvent, GpuMonitor, GpuThresholds, open_backend
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState
from supervisor.store import OutboxAlert


class GpuActions(CoreBase):
    """The core's answers to GPU health events."""

    def start_gpu_monitor(self) -> None:
        backend = open_backend()
        if backend is None:
            return
        gpu = self.settings.gpu
        thresholds = GpuThresholds(temperature_degraded_c=gpu.temperature_degraded_c,
                                   temperature_failed_c=gpu.temperature_failed_c)
        self.gpus = GpuMonitor(backend, self.state_dir / "gpu-quarantine.json", thresholds,
                               on_event=lambda event: self.loop.put("gpu", event), poll_interval_s=gpu.poll_interval)
        self.gpus.start()

    def stop_gpu_monitor(self) -> None:
        if self.gpus is not None:
            self.gpus.stop()
            self.gpus.backend.close()
            self.gpus = None

    def gpu_count(self) -> int | None:
        """GPUs on this node; None when there is no NVML (GPU features off)."""
        return self.gpus.count() if self.gpus is not None else None

    def clear_gpu(self, index: int) -> bool:
        """Lift a GPU's quarantine (operator's call) and let waiting jobs try again."""
        if self.gpus is None:
            return False
        cleared = self.gpus.clear(index)
        self._store().add_event(None, EventKind.GPU, f"gpu {index}: quarantine cleared by the operator",
                                data={"index": index, "cleared": cleared})
        self.wake_queued()
        return cleared

    def on_gpu_event(self, event: GpuEvent) -> None:
        """Act on a GPU event (loop thread): stop the attempts of a failed GPU, checkpoint on a degraded one."""
        store = self._store()
        now = self.clock()
        busy = self.gpu_jobs()
        job_id = busy.get(event.index) if event.index is not None else None
        data = {"index": event.index, "kind": event.kind, "health": event.health, "xid": event.xid,
                "application": event.application, "quarantined": event.quarantined}
        if event.application:
            # the job's own error (e.g. Xid 13/31/43): recorded against the job, the GPU stays in service
            store.add_event(job_id, EventKind.XID, f"gpu {event.index}: {event.reason}", now=now, data=data)
            return
        store.add_event(job_id, EventKind.GPU, event.reason, now=now, data=data)
        if event.health == "healthy":
            self.wake_queued()
            return
        if job_id is None:
            return
        job = store.get_job(job_id)
        attempt = store.last_attempt(job_id)
        if event.health == "failed" and job.state in (JobState.RUNNING, JobState.STARTING):
            what = GpuFaultAlert(gpu=event.index, fault=event.reason, quarantined=event.quarantined,
                                 attempt=attempt.n if attempt else None)
            # committed with the stop (the outbox): a daemon killed before sending it sends it at its next start
            self.begin_stop(job, Cause.GPU_FAULT, f"gpu fault: {event.reason}", now,
                            alert=OutboxAlert(what.event, what.details()))
            self.send_pending_alerts()
        elif event.health == "degraded" and attempt is not None and attempt.live and attempt.pid:
            # the trainer saves a checkpoint at its next step and goes on, so less is lost if the GPU fails
            self.runner_for(attempt).request_checkpoint(self.attempt_ref(job, attempt))
            store.add_event(job_id, EventKind.CHECKPOINT_REQUESTED, f"asked for a checkpoint: {event.reason}",
                            now=now, attempt=attempt.n)
