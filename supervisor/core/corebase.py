"""What every part of the core shares: the store, the runners, the timers, the caches, the clock.

``Supervisor`` is assembled from one class per concern (launch, stopping,
reconcile, GPU actions) over this base; each reads and writes only through
what is declared here, and only on the loop thread.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from supervisor.alerts.events import AlertEvent, event_from_details
from supervisor.core.loop import Loop
from supervisor.core.timers import Timers
from supervisor.core.tracking import AttemptTracker
from supervisor.errors import SupervisorError
from supervisor.gpu import GpuMonitor
from supervisor.jobfiles.layout import JobLayout
from supervisor.processes.watcher import CheckpointWatcher
from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState
from supervisor.runners.base import AttemptExit, AttemptRef, AttemptRunner
from supervisor.settings import DaemonSettings
from supervisor.store import AttemptRow, JobRow, OutboxAlert, Store

log = logging.getLogger("ml_supervisor")

# Alert hook: (job, what happened) -> None. Wired to the W&B alert dispatcher by the daemon.
AlertHook = Callable[[JobRow, AlertEvent], None]


class CoreBase(ABC):
    """Shared state of the core's parts (see the module docstring)."""

    settings: DaemonSettings
    state_dir: Path
    jobs_dir: Path
    clock: Callable[[], float]
    boot_id: str
    alert_hook: AlertHook | None
    store: Store | None
    runner: AttemptRunner  # the runner new attempts are launched with
    runners: dict[str, AttemptRunner]  # by kind: the runners of attempts found in the store
    timers: Timers
    tracker: AttemptTracker
    loop: Loop
    gpus: GpuMonitor | None
    _checkpoints: CheckpointWatcher | None

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("Supervisor.open() was not called")
        return self.store

    def wake_job(self, job_id: str) -> None:
        """Ask the loop to look at one job soon (thread-safe, coalesced)."""
        self.loop.wake_job(job_id)

    def job_config(self, job: JobRow) -> DictConfig:
        """The frozen config of a job (cached: it never changes)."""
        return self.tracker.config(job.id, job.job_dir)

    def runner_for_backend(self, backend: str) -> AttemptRunner:
        """The runner new attempts of a job with ``supervision.backend: backend`` use ("local": the default one)."""
        if backend == "local":
            return self.runner
        runner = self.runners.get(backend)
        if runner is None:
            raise SupervisorError(f"this daemon has no {backend!r} runner (it has: {', '.join(sorted(self.runners))})")
        return runner

    def runner_for(self, attempt: AttemptRow) -> AttemptRunner:
        """The runner that started ``attempt`` (by its persisted kind)."""
        runner = self.runners.get(attempt.runner_kind)
        if runner is None:  # a newer daemon's runner, or one not configured here: say so, never guess
            raise SupervisorError(f"attempt {attempt.n} of job {attempt.job_id} was started by the runner "
                                  f"{attempt.runner_kind!r}, which this daemon does not have "
                                  f"(it has: {', '.join(sorted(self.runners))})")
        return runner

    def attempt_ref(self, job: JobRow, attempt: AttemptRow) -> AttemptRef:
        return AttemptRef(job_id=job.id, attempt=attempt.n,
                          attempt_dir=JobLayout(Path(job.job_dir)).attempt(attempt.n).dir, state=attempt.runner_state)

    def deadline(self, job: JobRow, first_started_at: float | None) -> float | None:
        """When the job's budget is spent (wall clock), or None."""
        if job.budget_s is None or first_started_at is None:
            return None
        return first_started_at + job.budget_s

    def budget_spent(self, job: JobRow, now: float) -> bool:
        deadline = self.deadline(job, job.first_started_at)
        return deadline is not None and now >= deadline

    def _alert(self, job: JobRow, alert: AlertEvent) -> None:
        if self.alert_hook is None:
            return
        try:
            self.alert_hook(job, alert)
        except Exception:  # alerts must never break supervision
            log.exception("job %s: alert %s failed", job.id, alert.event)

    def send_pending_alerts(self) -> None:
        """Hand every alert still in the store's outbox to the alert hook, then mark it sent.

        At-least-once: a daemon killed between the hook and the mark sends it again on its next
        start, with the same ``alert_id`` (the job and the causing event's id), which the dispatcher
        records only once (dedup in ``alerts.jsonl``). An alert whose hook raised stays pending and
        is tried again with the next outbox alert or at the next start.
        """
        store = self._store()
        for owed in store.pending_alerts():
            try:
                job = store.get_job(owed.job_id)
                what = event_from_details(owed.alert, owed.details, alert_id=f"{owed.job_id}-event-{owed.event_id}")
            except (SupervisorError, KeyError, TypeError) as exc:  # a job or an event this version cannot rebuild
                log.error("job %s: outbox alert %s (event %d) cannot be sent: %s", owed.job_id, owed.alert,
                          owed.event_id, exc)
                store.mark_alert_sent(owed.event_id, now=self.clock())  # never retried on every event
                continue
            if self.alert_hook is not None:
                try:
                    self.alert_hook(job, what)
                except Exception:  # alerts must never break supervision
                    log.exception("job %s: alert %s failed; kept in the outbox", job.id, what.event)
                    continue
            store.mark_alert_sent(owed.event_id, now=self.clock())

    # -- the parts' entry points into each other (each defined by its part) -----------------------
    @abstractmethod
    def finish(self, job: JobRow, state: JobState, end_reason: str, message: str, now: float) -> JobRow:
        """End the job for good (``Supervisor``)."""

    @abstractmethod
    def on_attempt_end(self, job: JobRow, attempt: AttemptRow, process_exit: AttemptExit | None, now: float, *,
                       intent: Cause | None = None, intent_detail: str | None = None) -> None:
        """Record an attempt's end and act on the policy's decision (``Supervisor``)."""

    @abstractmethod
    def end_interrupted_launch(self, job: JobRow, attempt: AttemptRow, now: float) -> None:
        """Kill what may run of an attempt whose launch was never finished, and end it (``Reconciling``)."""

    @abstractmethod
    def begin_stop(self, job: JobRow, intent: Cause, detail: str, now: float,
                   alert: OutboxAlert | None = None) -> JobRow:
        """Stop the live attempt gracefully (``Stopping``)."""

    @abstractmethod
    def follow(self, job: JobRow, n: int) -> None:
        """Follow a live attempt's checkpoints and hang clock (``Launching``)."""

    @abstractmethod
    def gpu_jobs(self) -> dict[int, str]:
        """GPU index -> job holding it (``Launching``)."""

    @abstractmethod
    def wake_queued(self) -> None:
        """Wake every queued job (``Launching``)."""
