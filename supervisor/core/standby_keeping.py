"""The core's side of standby trainers: when to prepare one, and offering a relaunch to it.

The runner owns the processes (``base.StandbyRunner``); this part decides. A job
gets a standby when ``supervision.standby`` is ``on``, or ``auto`` and the node
has the memory, once its running attempt has made its first step; attempt 1
starts as a standby while submit's import check runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

from supervisor.core.context import CoreContext
from supervisor.core.elastic_shape import plan_for
from supervisor.core.runner_set import RunnerSet
from supervisor.core.spec import attempt_spec
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.resume import ResumeChoice
from supervisor.runners.base import AttemptSpec, RunnerState, StandbyRunner
from supervisor.store import AttemptRow, JobRow

log = logging.getLogger("ml_supervisor")

# ``auto`` keeps a standby only with this much memory available (a CPU standby of the digits example is ~400 MiB).
AUTO_MIN_AVAILABLE_BYTES = 4 * 2**30
MAX_FAILED_PREPARES = 2  # standbys that may die unready per attempt before the job goes without one


def standby_wanted(setting: str, available_bytes: int, trainer_module: str) -> bool:
    """Whether a job with ``supervision.standby: setting`` gets a standby.

    ``auto``: when the node has ``AUTO_MIN_AVAILABLE_BYTES`` free and the trainer is
    ours (the standby mode is ``python -m trainer``'s).
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    return trainer_module == "trainer" and available_bytes >= AUTO_MIN_AVAILABLE_BYTES


class StandbyKeeper:
    """Prepare standbys and offer relaunches to them (only with a backend whose runner keeps them)."""

    def __init__(self, ctx: CoreContext, runners: RunnerSet) -> None:
        self._ctx = ctx
        self._runners = runners

    def keep_standby(self, job: JobRow, attempt: AttemptRow) -> None:
        """While ``attempt`` runs, make sure a standby waits to become the next attempt."""
        runner = self._runners.standby_for(self._ctx.job_config(job))
        if runner is None:
            return
        if runner.has_standby(job.id):
            runner.serve_pending(job.id)  # one asked of a zygote that was still importing
            return
        if runner.failed_prepares(job.id, attempt.n + 1) >= MAX_FAILED_PREPARES:
            return
        tracked = self._ctx.tracker.get_or_track(job.id, attempt.n)
        if tracked.standby_setting is None:
            tracked.standby_setting = str(self._ctx.job_config(job).supervision.standby)
        if not self._allowed(job, tracked.standby_setting):
            return
        beat = read_heartbeat(JobLayout(Path(job.job_dir)).attempt(attempt.n).heartbeat)
        if beat is None or not beat.step:
            return  # not stepping yet: the standby's imports would slow the attempt's own start
        # elastic DDP: a standby of the size the job runs at now (one of another size is dropped at the promote)
        self._prepare(runner, job, attempt.n + 1, attempt.world_size)

    def start_first_standby(self, job: JobRow) -> bool:
        """While submit's import check runs: start attempt 1 as a standby, if the job gets one (True then).

        The launch promotes it, ready or not; ``drop_first_standby`` undoes it should the check fail.
        """
        cfg = self._ctx.job_config(job)
        runner = self._runners.standby_for(cfg)
        if runner is None or not self._allowed(job, str(cfg.supervision.standby)):
            self._ctx.tracker.forget(job.id)  # not a job yet: nothing cached until it is one
            return False
        self._prepare(runner, job, 1)
        return True

    def drop_first_standby(self, job_id: str) -> None:
        """The submit was refused: kill attempt 1's standby and forget the job."""
        self.drop_standby(job_id)
        self._ctx.tracker.forget(job_id)

    def promote(self, job: JobRow, spec: AttemptSpec) -> RunnerState | None:
        """Start ``spec`` on the job's standby; None when it has none usable (launch cold)."""
        runner = self._runners.standby_for(self._ctx.job_config(job))
        return runner.promote(spec.job_id, spec) if runner is not None else None

    def drop_standby(self, job_id: str) -> None:
        """The job ended for good: kill its standby."""
        for runner in self._runners.standby_runners():
            runner.forget_job(job_id)

    def _allowed(self, job: JobRow, setting: str) -> bool:
        """Whether ``job`` may have a standby now (its owner, its setting, the node's memory)."""
        if job.owner_uid != os.getuid():
            # Another user's job (shared-server mode): a standby is started as the daemon's user (prepare has
            # no run_as yet; docs/shared-server.md). Cold starts only.
            return False
        if setting == "auto" and not self._runners.backend(self._ctx.job_config(job)).standby_auto:
            return False  # e.g. Slurm: its standbys use the compute nodes' memory, which is not measured here
        return standby_wanted(setting, psutil.virtual_memory().available, self._ctx.settings.trainer_module)

    def _prepare(self, runner: StandbyRunner, job: JobRow, n: int, world_size: int | None = None) -> None:
        try:
            runner.prepare(self._spec(job, n, world_size))
        except OSError as exc:
            log.warning("job %s: cannot start a standby: %s", job.id, exc)

    def _spec(self, job: JobRow, n: int, world_size: int | None = None) -> AttemptSpec:
        """The spec a standby for attempt ``n`` starts with (from scratch, no GPUs: the handover says the rest).

        ``world_size``: an elastic job's current size (its ranks); None: the configured size.
        """
        cfg = self._ctx.job_config(job)
        return attempt_spec(job, cfg, n, ResumeChoice(None, None, "scratch", ()), backend=self._runners.backend(cfg),
                            gpus=[], first_started_at=job.first_started_at or self._ctx.clock(),
                            trainer_module=self._ctx.settings.trainer_module, boot_id=self._ctx.boot_id,
                            state_dir=self._ctx.state_dir, base_env=os.environ,
                            elastic=plan_for(cfg, world_size) if world_size else None)
