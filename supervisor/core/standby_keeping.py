"""The core's side of standby trainers: when to prepare one, and promoting it at a relaunch.

The runner (``runners.standby``) owns the processes; this part decides. A job
gets a standby when ``supervision.standby`` is ``on``, or ``auto`` and the
node has the memory for one, once its running attempt has made its first
step (so the standby's imports never compete with the attempt's own start);
attempt 1 itself starts as a standby while submit's import check runs.
A relaunch first offers the attempt to the standby; with none usable it
starts cold, as without standbys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import psutil

from supervisor.core.corebase import CoreBase
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.resume import ResumeChoice
from supervisor.runners.base import AttemptSpec, RunnerState
from supervisor.runners.standby import StandbyLocalRunner
from supervisor.store import AttemptRow, JobRow

log = logging.getLogger("ml_supervisor")

# ``auto`` keeps a standby only with this much memory available (a CPU standby of the digits example is ~400 MiB).
AUTO_MIN_AVAILABLE_BYTES = 4 * 2**30
MAX_FAILED_PREPARES = 2  # standbys that may die unready per attempt before the job goes without one


def standby_wanted(setting: str, available_bytes: int, trainer_module: str) -> bool:
    """Whether a job with ``supervision.standby: setting`` gets a standby.

    ``auto``: when the node has ``AUTO_MIN_AVAILABLE_BYTES`` free and the trainer is
    ours (a daemon's ``trainer_module`` may name any module that speaks the attempt
    command line; the standby mode is ``python -m trainer``'s).
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    return trainer_module == "trainer" and available_bytes >= AUTO_MIN_AVAILABLE_BYTES


class StandbyKeeping(CoreBase):
    """Prepare and promote standbys (only with a runner that keeps them)."""

    def _standby_runner(self) -> StandbyLocalRunner | None:
        runner = self.runner
        return runner if isinstance(runner, StandbyLocalRunner) else None

    def keep_standby(self, job: JobRow, attempt: AttemptRow) -> None:
        """While ``attempt`` runs, make sure a standby waits to become the next attempt."""
        runner = self._standby_runner()
        if runner is None:
            return
        if runner.has_standby(job.id):
            runner.serve_pending(job.id)  # one asked of a zygote that was still importing
            return
        if runner.failed_prepares.get((job.id, attempt.n + 1), 0) >= MAX_FAILED_PREPARES:
            return
        tracked = self.tracker.get_or_track(job.id, attempt.n)
        if tracked.standby_setting is None:
            tracked.standby_setting = str(self.job_config(job).supervision.standby)
        if not self._standby_allowed(job, tracked.standby_setting):
            return
        beat = read_heartbeat(JobLayout(Path(job.job_dir)).attempt(attempt.n).heartbeat)
        if beat is None or not beat.step:
            return  # not stepping yet: the standby's imports would slow the attempt's own start
        self._prepare_standby(runner, job, attempt.n + 1)

    def start_first_standby(self, job: JobRow) -> bool:
        """While submit's import check runs: start attempt 1 as a standby, if the job gets one (True then).

        The check and attempt 1's imports then overlap (``submit``'s docstring);
        the launch promotes it, ready or not (a standby still importing is still
        ahead of a cold start). ``drop_first_standby`` undoes it should the check fail.
        """
        runner = self._standby_runner()
        if runner is None or not self._standby_allowed(job, str(self.job_config(job).supervision.standby)):
            self.tracker.forget(job.id)  # not a job yet: nothing cached until it is one
            return False
        self._prepare_standby(runner, job, 1)
        return True

    def drop_first_standby(self, job_id: str) -> None:
        """The submit was refused: kill attempt 1's standby and forget the job."""
        self.drop_standby(job_id)
        self.tracker.forget(job_id)

    def _standby_allowed(self, job: JobRow, setting: str) -> bool:
        """Whether ``job`` may have a standby now (its setting, the node's memory, its backend and owner)."""
        if job.owner_uid != os.getuid():
            # Another user's job (shared-server mode): a standby is started as the daemon's user (prepare has
            # no run_as yet; docs/shared-server.md). Cold starts only.
            return False
        if str(self.job_config(job).supervision.backend) != "local":
            return False  # a standby is local processes (one per rank): Slurm allocations start cold (see docs)
        return standby_wanted(setting, psutil.virtual_memory().available, self.settings.trainer_module)

    def _prepare_standby(self, runner: StandbyLocalRunner, job: JobRow, n: int) -> None:
        try:
            runner.prepare(self.standby_spec(job, n))
        except OSError as exc:
            log.warning("job %s: cannot start a standby: %s", job.id, exc)

    def standby_spec(self, job: JobRow, n: int) -> AttemptSpec:
        """The spec a standby for attempt ``n`` starts with (from scratch, no GPUs: the handover says the rest)."""
        from supervisor.core.launching import attempt_spec

        return attempt_spec(job, self.job_config(job), n, ResumeChoice(None, None, "scratch", ()), gpus=[],
                            first_started_at=job.first_started_at or self.clock(),
                            trainer_module=self.settings.trainer_module, boot_id=self.boot_id,
                            state_dir=self.state_dir, base_env=os.environ)

    def promote_standby(self, spec: AttemptSpec) -> RunnerState | None:
        """Start ``spec`` on the job's standby; None when it has none usable (launch cold)."""
        runner = self._standby_runner()
        if runner is None:
            return None
        return runner.promote(spec.job_id, spec)

    def drop_standby(self, job_id: str) -> None:
        """The job ended for good: kill its standby."""
        runner = self._standby_runner()
        if runner is not None:
            runner.forget_job(job_id)
