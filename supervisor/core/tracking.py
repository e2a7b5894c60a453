"""What the loop remembers about each job between polls, and the one place that forgets it.

Rebuilt from the store and the job's files after a daemon restart: nothing
here is the truth, only a cache of it (the hang clock's slowest step, how far
the manifest was read, the frozen config). A finished job has nothing here
(``forget``), beyond a bounded LRU of recently read configs.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from supervisor.config import load_job_config
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.stragglers import SlowdownDetector, StragglerDetector


@dataclass
class TrackedAttempt:
    """A job's live attempt as the loop follows it."""

    attempt: int
    slowest_step: float | None = None
    manifest_offset: int = 0  # bytes of the manifest already turned into events
    hang_setting: str | None = None
    world_size: int | None = None  # ranks of the attempt (read once from the config)
    # When the runner first reported it running: an attempt may wait in a batch queue for hours,
    # and the start-up allowance counts from here, not from the submission.
    running_since: float | None = None
    standby_setting: str | None = None  # supervision.standby, read once per attempt
    # The straggler / slowdown detectors of this attempt, and the steps each rank had at the last observation.
    stragglers: StragglerDetector | None = None
    slowdown: SlowdownDetector | None = None
    observed_steps: dict[int, int] = field(default_factory=dict)


FINISHED_CONFIGS = 16  # frozen configs of finished jobs kept (the latest used)


class AttemptTracker:
    """Per-job caches of the loop: tracked attempts and frozen configs."""

    def __init__(self) -> None:
        self._attempts: dict[str, TrackedAttempt] = {}
        self._configs: dict[str, DictConfig] = {}
        self._finished: OrderedDict[str, DictConfig] = OrderedDict()  # an LRU of finished jobs' configs

    def track(self, job_id: str, attempt: int, *, manifest_offset: int = 0) -> TrackedAttempt:
        tracked = self._attempts[job_id] = TrackedAttempt(attempt=attempt, manifest_offset=manifest_offset)
        return tracked

    def get(self, job_id: str, attempt: int) -> TrackedAttempt | None:
        """The tracked attempt of a job, if it is attempt ``attempt``."""
        tracked = self._attempts.get(job_id)
        return tracked if tracked is not None and tracked.attempt == attempt else None

    def get_or_track(self, job_id: str, attempt: int) -> TrackedAttempt:
        return self.get(job_id, attempt) or self.track(job_id, attempt)

    def end_attempt(self, job_id: str) -> None:
        """The job's attempt ended (the job goes on)."""
        self._attempts.pop(job_id, None)

    def config(self, job_id: str, job_dir: str) -> DictConfig:
        """The frozen config of a job (cached until ``forget``: it never changes)."""
        cfg = self._configs.get(job_id)
        if cfg is None:
            cfg = self._configs[job_id] = load_job_config(JobLayout(Path(job_dir)).config)
        return cfg

    def finished_config(self, job_id: str, job_dir: str) -> DictConfig:
        """The frozen config of a finished job (its ending's alert reads it after ``forget``): from the cache
        when the job is still in it, else from a small LRU, never kept for good. A frozen config in memory costs
        about 100 KB; kept per finished job it grew the daemon without bound (issue 35)."""
        cfg = self._configs.get(job_id)
        if cfg is None:
            cfg = self._finished.pop(job_id, None)
        if cfg is None:
            cfg = load_job_config(JobLayout(Path(job_dir)).config)
        self._finished[job_id] = cfg  # the most recent last
        while len(self._finished) > FINISHED_CONFIGS:
            self._finished.popitem(last=False)
        return cfg

    def forget(self, job_id: str) -> None:
        """The job finished: drop everything about it (a restart of the job loads it again)."""
        self._attempts.pop(job_id, None)
        self._configs.pop(job_id, None)

    def tracked_jobs(self) -> set[str]:
        """Jobs with anything kept for good (the LRU of finished jobs' configs is not: it is bounded)."""
        return set(self._attempts) | set(self._configs)
