"""What every part of the core reads: the settings, the clock, the store, the loop's queue, the caches, the GPUs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from supervisor.core.loop import Loop
from supervisor.core.timers import Timers
from supervisor.core.tracking import AttemptTracker
from supervisor.gpu import GpuMonitor
from supervisor.jobfiles.layout import JobLayout
from supervisor.processes.watcher import CheckpointWatcher
from supervisor.rules.states import LIVE_STATES, JobState
from supervisor.runners.base import AttemptRef
from supervisor.settings import DaemonSettings
from supervisor.store import AttemptRow, JobRow, Store


@dataclass
class CoreContext:
    """Shared by the core's parts, all on the loop thread. Built by ``Supervisor.open``.

    Fields are set once; ``boot_id`` alone may be replaced (``Supervisor.boot_id``: tests play a reboot).
    """

    settings: DaemonSettings
    state_dir: Path
    clock: Callable[[], float]
    boot_id: str
    store: Store
    loop: Loop
    timers: Timers
    tracker: AttemptTracker
    gpus: GpuMonitor | None  # None: no NVML on this node (GPU features off)
    checkpoints: CheckpointWatcher | None  # None: file events off (tests drive the core by hand)

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"

    def wake_job(self, job_id: str) -> None:
        """Ask the loop to look at one job soon (thread-safe, coalesced)."""
        self.loop.wake_job(job_id)

    def wake_queued(self) -> None:
        """Wake every queued job (GPUs may have come free)."""
        for job in self.store.list_jobs(states=[JobState.QUEUED]):
            self.wake_job(job.id)

    def job_config(self, job: JobRow) -> DictConfig:
        """The frozen config of a job (cached: it never changes)."""
        return self.tracker.config(job.id, job.job_dir)

    def attempt_ref(self, job: JobRow, attempt: AttemptRow) -> AttemptRef:
        """An attempt as its runner finds it again."""
        return AttemptRef(job_id=job.id, attempt=attempt.n,
                          attempt_dir=JobLayout(Path(job.job_dir)).attempt(attempt.n).dir, state=attempt.runner_state)

    def gpu_jobs(self) -> dict[int, str]:
        """GPU index -> id of the job whose live attempt holds it."""
        busy: dict[int, str] = {}
        for job in self.store.list_jobs(states=list(LIVE_STATES)):
            attempt = self.store.last_attempt(job.id)
            if attempt is not None and attempt.live:
                busy.update({g: job.id for g in attempt.gpus})
        return busy
