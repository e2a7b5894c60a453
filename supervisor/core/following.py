"""Following a live attempt: its new checkpoints (turned into events) and the job's timers."""

from __future__ import annotations

from pathlib import Path

from supervisor.core.context import CoreContext
from supervisor.core.timers import TimerKind
from supervisor.errors import SupervisorError
from supervisor.jobfiles.atomic import read_json_lines_from
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.safe_read import regular_size
from supervisor.rules.budget import deadline
from supervisor.rules.causes import EventKind
from supervisor.rules.states import JobState
from supervisor.store import AttemptRow, JobRow


class Following:
    """What the core keeps up with for every live job, launched or adopted."""

    def __init__(self, ctx: CoreContext) -> None:
        self._ctx = ctx

    def follow(self, job: JobRow, n: int) -> None:
        """Follow a live attempt (launched or adopted): its new checkpoints and its hang clock."""
        jl = JobLayout(Path(job.job_dir))
        # checkpoints saved before now are not news: events start from the manifest's current end
        self._ctx.tracker.track(job.id, n, manifest_offset=_size(jl.manifest))
        if self._ctx.checkpoints is not None:
            self._ctx.checkpoints.watch(job.id, jl.checkpoints)

    def schedule_timers(self, job: JobRow) -> None:
        """(Re)arm the job's timers from its row: budget, backoff end, stop escalation."""
        timers = self._ctx.timers
        spent_at = deadline(job.budget_s, job.first_started_at)
        if spent_at is not None:
            timers.schedule(job.id, TimerKind.BUDGET, spent_at)
        if job.state is JobState.BACKOFF and job.next_start_at:
            timers.schedule(job.id, TimerKind.BACKOFF, job.next_start_at)
        if job.state is JobState.STOPPING and job.stop_deadline:
            timers.schedule(job.id, TimerKind.ESCALATE, job.stop_deadline)

    def checkpoints_changed(self, job_id: str) -> None:
        """The manifest grew: record the new checkpoints; nothing else about the job changed."""
        store = self._ctx.store
        try:
            job = store.get_job(job_id)
        except SupervisorError:
            return
        attempt = store.last_attempt(job_id)
        if attempt is not None and attempt.live:
            self.note_checkpoints(job, attempt)

    def note_checkpoints(self, job: JobRow, attempt: AttemptRow) -> None:
        """Turn new manifest lines into events (for ``supervisorctl events`` and the web page)."""
        tracked = self._ctx.tracker.get(job.id, attempt.n)
        if tracked is None:
            return
        manifest = JobLayout(Path(job.job_dir)).manifest
        new, tracked.manifest_offset = read_json_lines_from(manifest, tracked.manifest_offset)
        for entry in new:
            if entry.get("event") == "save":
                score = entry.get("score")
                shown = f" {entry.get('monitor')}={score:.4g}" if score is not None else ""
                self._ctx.store.add_event(job.id, EventKind.CHECKPOINT,
                                          f"checkpoint at step {entry.get('step')}{shown}", attempt=attempt.n,
                                          durable=False, data={"path": entry.get("path"), "step": entry.get("step"),
                                                               "score": score, "kind": entry.get("kind")})


def _size(path: Path) -> int:
    """The size of a file, 0 when it does not exist (yet)."""
    try:
        return regular_size(path) or 0  # not through a link; a file that does not answer: 0
    except OSError:
        return 0
