"""The supervisor core: one loop that launches, watches, stops and relaunches jobs.

One thread (the loop, ``supervisor.core.loop``) owns every decision and every write
to the store. Other threads only put work on its queue: runner notices (an
attempt ended), checkpoint events (watchdog), GPU events, API requests and
signal handlers; timers (``supervisor.core.timers``) run on the injected clock.
``tick()`` polls every job; tests call it directly.

The core drives attempts through a runner (``supervisor.runners``) and never
knows which one. Its parts, one concern each: ``launch`` (the pure
``attempt_spec`` and starting an attempt), ``stopping`` (graceful stop,
escalation), ``reconcile`` (daemon start), ``gpu_actions``; this module keeps
submit / stop / restart / tick and the end-of-attempt path.

The same core serves the daemon (``ml-supervisor serve``) and a foreground run
(``ml-supervisor run``).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from supervisor.alerts.events import (
    BudgetAlert,
    CompletedAlert,
    FailedAlert,
    HangAlert,
    RestartAlert,
    StoppedAlert,
)
from supervisor.core.corebase import AlertHook
from supervisor.core.gpu_actions import GpuActions
from supervisor.core.launching import Launching
from supervisor.core.loop import Loop
from supervisor.core.rank_files import attempt_heartbeat, job_world_size, rank_exit_records
from supervisor.core.reconciling import Reconciling
from supervisor.core.standby_keeping import StandbyKeeping
from supervisor.core.stopping import Stopping
from supervisor.core.submit import SubmitRequest, prepare_job
from supervisor.core.timers import TimerKind, Timers
from supervisor.core.tracking import AttemptTracker
from supervisor.errors import AlreadyRunning, InvalidTransition, SupervisorError
from supervisor.gpu import allocate
from supervisor.jobfiles.atomic import read_json_lines, read_json_lines_from
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best
from supervisor.processes.boot import current_boot_id
from supervisor.processes.control import try_lock
from supervisor.processes.watcher import CheckpointWatcher
from supervisor.rules import policy as restart_policy
from supervisor.rules.causes import Cause, EndReason, EventKind
from supervisor.rules.hang import check_hang, update_slowest_step
from supervisor.rules.outcome import is_disk_full
from supervisor.rules.rank_outcome import classify_ranks_end
from supervisor.rules.resume import choose_resume
from supervisor.rules.states import JobState
from supervisor.runners.base import AttemptExit, AttemptRunner, Phase, RunnerNotice
from supervisor.runners.slurm import SlurmRunner
from supervisor.runners.standby import StandbyLocalRunner
from supervisor.settings import DaemonSettings
from supervisor.store import AttemptRow, JobRow, OutboxAlert, Store

log = logging.getLogger("ml_supervisor")
T = TypeVar("T")

__all__ = ["AlertHook", "Supervisor"]

# A factory gets the supervisor (for its notify/GPU hooks) and returns the runner new attempts use.
RunnerFactory = Callable[["Supervisor"], AttemptRunner]


def _local_runner(sup: Supervisor) -> AttemptRunner:
    return StandbyLocalRunner(sup.state_dir, sup.on_runner_notice, watch_exits=sup.settings.watch_files,
                              gpu_backend=lambda: sup.gpus.backend if sup.gpus is not None else None,
                              preflight_wait_s=sup.settings.gpu.preflight_wait)


class Supervisor(StandbyKeeping, Launching, Stopping, Reconciling, GpuActions):
    """The core. ``open()`` it, then drive it with ``run()`` (a thread) or ``tick()`` (tests)."""

    def __init__(self, settings: DaemonSettings, *, clock: Callable[[], float] = time.time,
                 boot_id: str | None = None, alert_hook: AlertHook | None = None,
                 runner: RunnerFactory = _local_runner) -> None:
        assert settings.state_dir, "settings.state_dir must be resolved"
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.clock = clock
        self.boot_id = boot_id or current_boot_id()
        self.alert_hook = alert_hook
        self.store = None
        self.gpus = None
        self._checkpoints = None
        self._runner_factory = runner
        self.runners = {}
        self.tracker = AttemptTracker()
        self.timers = Timers(clock, self.wake_job)
        self.loop = Loop(poll=self.poll_job, tick=self.tick, timers=self.timers, clock=clock,
                         tick_interval=settings.tick_interval)
        self.loop.handlers.update(checkpoints=self._checkpoints_changed, gpu=self.on_gpu_event)
        self._lock_fd: int | None = None

    # -- the loop hooks the daemon sets --------------------------------------------------------------
    @property
    def on_loop(self) -> Callable[[], None] | None:
        """Called on the loop thread at every turn (at least every ``loop_wait`` s): the systemd watchdog ping."""
        return self.loop.on_turn

    @on_loop.setter
    def on_loop(self, hook: Callable[[], None] | None) -> None:
        self.loop.on_turn = hook

    @property
    def loop_wait(self) -> float:
        return self.loop.max_wait

    @loop_wait.setter
    def loop_wait(self, seconds: float) -> None:
        self.loop.max_wait = seconds

    # -- life cycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the state dir's lock, open the store, reconcile every job, start watching."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock_fd = try_lock(self.state_dir / "daemon.lock")
        if self._lock_fd is None:
            raise AlreadyRunning(f"another ml-supervisor already uses {self.state_dir}")
        self.store = Store(self.state_dir / "supervisor.db")
        self.runner = self._runner_factory(self)
        self.runners = {self.runner.kind: self.runner}
        # Slurm attempts are always followable (nothing runs until a job asks for it: no thread, no poll).
        self.runners.setdefault(SlurmRunner.kind, SlurmRunner(self.on_runner_notice))
        if self.settings.watch_files:
            self._checkpoints = CheckpointWatcher(lambda job_id: self.loop.put("checkpoints", job_id))
            self._checkpoints.start()
        self.start_gpu_monitor()
        self.reconcile()
        self.send_pending_alerts()  # what a killed daemon committed and had not sent yet
        for job in self.store.list_jobs():
            if not job.state.terminal:
                self.schedule_timers(job)

    def close(self) -> None:
        """Stop watching and release the state dir. Running trainers are left running, on purpose."""
        self.loop.stop()
        for runner in self.runners.values():
            runner.close()
        if self._checkpoints is not None:
            self._checkpoints.stop()
        self.stop_gpu_monitor()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def start_thread(self) -> threading.Thread:
        """Run the loop in a background thread (the foreground run and the daemon both do)."""
        return self.loop.start_thread()

    def run(self) -> None:
        """The loop (see ``Loop.run``)."""
        self.loop.run()

    # -- thread-safe entry points --------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise its error)."""
        return self.loop.call(fn, *args, timeout=timeout)

    def on_runner_notice(self, notice: RunnerNotice) -> None:
        """A runner saw something happen to a job's attempt (any thread): look at the job now."""
        self.wake_job(notice.job_id)

    # -- operations (loop thread) --------------------------------------------------------------
    def submit(self, req: SubmitRequest, *, owner_uid: int | None = None) -> JobRow:
        """Validate and freeze a job for ``owner_uid`` (default: the daemon's user), then queue it.

        Thread-safe. The slow part (the import check in a subprocess) runs in the
        caller's thread; only the insert runs on the loop.
        """
        job, _cfg = prepare_job(req, jobs_dir=self.jobs_dir, trainer_module=self.settings.trainer_module,
                                gpu_count=self.gpu_count(), check_timeout=self.settings.check_timeout,
                                now=self.clock(), owner_uid=owner_uid,
                                while_checking=self._first_standby_while_checking)
        return self.call(self._register, job, req)

    def _first_standby_while_checking(self, job: JobRow) -> Callable[[], None] | None:
        """Submit's ``while_checking`` (the caller's thread): attempt 1's standby, started on the loop."""
        if not self.call(self._start_first_standby_unless_queued, job):
            return None
        return lambda: self.call(self.drop_first_standby, job.id)

    def _start_first_standby_unless_queued(self, job: JobRow) -> bool:
        n = job.gpus_requested
        if n and (self.gpus is None or allocate(n, self.gpus.allocatable(), self.gpu_jobs()) is None):
            return False  # it will wait for GPUs: a standby would only hold memory meanwhile
        return self.start_first_standby(job)

    def _register(self, job: JobRow, req: SubmitRequest) -> JobRow:
        try:
            self._store().insert_job(job, message=f"submitted {job.name} from {job.config_source}",
                                     data={"config_source": job.config_source, "overrides": req.overrides})
        except BaseException:
            # Not inserted (one transaction): no job, so neither its attempt-1 standby nor its dir may stay.
            self.drop_first_standby(job.id)
            shutil.rmtree(job.job_dir, ignore_errors=True)
            raise
        log.info("job %s submitted (%s)", job.id, job.config_source)
        self.wake_job(job.id)
        return job

    def stop_job(self, job_id: str, *, intent: Cause = Cause.USER_STOP, detail: str = "stopped by the user") -> JobRow:
        """Stop a job for good (gracefully: the runner's graceful stop, a grace period, a kill)."""
        store = self._store()
        job = store.get_job(job_id)
        now = self.clock()
        if job.state.terminal:
            raise InvalidTransition(f"job {job.id} is already {job.state.value}")
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            return self.stop_idle(job, Cause(intent), now)
        if job.state is JobState.STOPPING:
            return job
        return self.begin_stop(job, Cause(intent), detail, now)

    def restart_job(self, job_id: str) -> JobRow:
        """Relaunch from the best checkpoint: a live job is stopped first; a finished one is queued again."""
        store = self._store()
        job = store.get_job(job_id)
        now = self.clock()
        if job.state.terminal:
            job = store.transition(job.id, JobState.QUEUED, now=now, message="queued again by the user",
                                   kind=EventKind.REQUEUED, end_reason=None, ended_at=None, next_start_at=None)
            self.wake_job(job.id)
            return job
        if job.state in (JobState.RUNNING, JobState.STARTING):
            return self.begin_stop(job, Cause.USER_RESTART, "restart requested by the user", now)
        if job.state is JobState.BACKOFF:
            store.update_job(job.id, now=now, next_start_at=now)
            self.wake_job(job.id)
        return store.get_job(job.id)

    # -- the poll ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Fire due timers and poll every job that is not finished (the safety net under notices and timers)."""
        self.timers.fire_due()
        for runner in self.runners.values():
            runner.tick()
        for job in self._store().list_jobs(states=[s for s in JobState if not s.terminal]):
            try:
                self.poll_job(job.id, job)
            except Exception:
                log.exception("error while polling job %s", job.id)

    def poll_job(self, job_id: str, job: JobRow | None = None) -> None:
        """Look at one job and act: launch it, notice its trainer started or ended, stop it, escalate."""
        store = self._store()
        if job is None:
            try:
                job = store.get_job(job_id)
            except SupervisorError:
                return
        if job.state.terminal:
            return
        now = self.clock()
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            if self.budget_spent(job, now):
                self.stop_idle(job, Cause.BUDGET, now)
            elif job.state is JobState.QUEUED or (job.next_start_at or 0) <= now:
                self.launch(job, now)
            return
        attempt = store.last_attempt(job.id)
        if attempt is None or not attempt.live:
            log.error("job %s is %s without a live attempt; relaunching", job.id, job.state.value)
            store.transition(job.id, JobState.BACKOFF, now=now, message="no live attempt found", next_start_at=now)
            return
        runner = self.runner_for(attempt)
        seen = runner.observe(self.attempt_ref(job, attempt))
        if seen.state != attempt.runner_state:
            store.update_attempt(job.id, attempt.n, runner_state=seen.state, pid=seen.trainer_pid)
            attempt = store.last_attempt(job.id) or attempt
        if seen.phase is Phase.ENDED:
            if seen.exit is None:
                runner.kill(self.attempt_ref(job, attempt))  # vanished: leave nothing of it behind
            self.on_attempt_end(job, attempt, seen.exit, now)
            return
        if job.state is JobState.STARTING:
            if seen.phase is not Phase.RUNNING:
                if seen.phase is Phase.PENDING and self.budget_spent(job, now):
                    # Queue wait counts against the budget: a Slurm job still queued at the deadline is cancelled.
                    self.begin_stop(job, Cause.BUDGET, "the time budget was spent while the attempt was queued", now)
                return
            self.tracker.get_or_track(job.id, attempt.n).running_since = now
            job = store.transition(job.id, JobState.RUNNING, now=now, attempt=attempt.n,
                                   message=f"attempt {attempt.n} running (pid {seen.trainer_pid})",
                                   data={"pid": seen.trainer_pid})
        self._note_checkpoints(job, attempt)
        if job.state is JobState.STOPPING:
            if job.stop_deadline is not None and now >= job.stop_deadline:
                self.escalate(job, attempt, now)
            return
        if self.budget_spent(job, now):
            self.begin_stop(job, Cause.BUDGET, "the time budget was spent", now)
            return
        self.check_attempt_health(job, attempt, now)
        self.keep_standby(job, attempt)

    def check_attempt_health(self, job: JobRow, attempt: AttemptRow, now: float) -> None:
        """Hang detection: no progress in the heartbeat for longer than the attempt's timeout."""
        layout = JobLayout(Path(job.job_dir)).attempt(attempt.n)
        tracked = self.tracker.get_or_track(job.id, attempt.n)
        if tracked.world_size is None:
            tracked.world_size = job_world_size(self.job_config(job))
        beat = attempt_heartbeat(layout, tracked.world_size)  # several ranks: the slowest one's
        tracked.slowest_step = update_slowest_step(tracked.slowest_step, beat)
        if tracked.hang_setting is None:  # OmegaConf access is slow; read the setting once per attempt
            tracked.hang_setting = str(self.job_config(job).supervision.hang_timeout)
        started = max(attempt.started_at, tracked.running_since or attempt.started_at)
        verdict = check_hang(now=now, attempt_started_at=started, heartbeat=beat,
                             slowest_step_s=tracked.slowest_step, setting=tracked.hang_setting,
                             settings=self.settings.hang)
        if verdict.hung:
            self.begin_stop(job, Cause.HANG, f"hang: {verdict.reason}", now)

    # -- an attempt ended ------------------------------------------------------------------------
    def on_attempt_end(self, job: JobRow, attempt: AttemptRow, process_exit: AttemptExit | None, now: float, *,
                       intent: Cause | None = None, intent_detail: str | None = None) -> None:
        """Record how the attempt ended, ask the restart policy, and act on its decision."""
        store = self._store()
        jl = JobLayout(Path(job.job_dir))
        al = jl.attempt(attempt.n)
        world_size = process_exit.world_size if process_exit is not None else job_world_size(self.job_config(job))
        records = rank_exit_records(al, world_size)
        record = records.get(0)
        if intent is None and job.stop_intent:
            intent, intent_detail = Cause(job.stop_intent), job.detail
        # several ranks: the first rank that failed is the cause (the others died of its loss)
        outcome = classify_ranks_end(process_exit, records, intent, intent_detail)
        ended_at = process_exit.ended_at if process_exit and process_exit.ended_at else now
        saves = [e for e in read_json_lines(jl.manifest) if e.get("event") == "save" and e.get("attempt") == attempt.n]
        beat = read_heartbeat(al.heartbeat)
        step = record.global_step if record is not None else (beat.step if beat else None)
        store.update_attempt(job.id, attempt.n, ended_at=ended_at, exit_code=outcome.exit_code,
                             signal=outcome.signal, reason=outcome.cause, detail=outcome.detail,
                             new_checkpoints=len(saves), global_step=step)
        self.tracker.end_attempt(job.id)
        self.runner_for(attempt).forget(job.id)
        self.timers.cancel(job.id, TimerKind.ESCALATE)
        self.timers.cancel(job.id, TimerKind.STARTED)
        history = [restart_policy.PastAttempt(n=a.n, started_at=a.started_at, ended_at=a.ended_at, cause=a.cause,
                                              new_checkpoints=a.new_checkpoints, disk_full=is_disk_full(a.detail))
                   for a in store.attempts(job.id) if a.n != attempt.n]
        supervision = self.job_config(job).supervision
        decision = restart_policy.decide(
            restart_policy.AttemptEnd(cause=outcome.cause, ended_at=ended_at, new_checkpoints=len(saves),
                                      completion_reason=outcome.completion_reason,
                                      disk_full=is_disk_full(outcome.detail)),
            history, now=now, first_started_at=job.first_started_at or attempt.started_at,
            policy=restart_policy.RestartPolicy.from_config(supervision),
            counting_since=store.last_event_time(job.id, EventKind.REQUEUED))
        store.add_event(job.id, EventKind.ATTEMPT_ENDED, f"attempt {attempt.n} ended: {outcome.detail}", now=now,
                        attempt=attempt.n, data={"cause": outcome.cause, "exit_code": outcome.exit_code,
                                                 "signal": outcome.signal, "new_checkpoints": len(saves)})
        log.info("job %s: attempt %d ended (%s: %s) -> %s", job.id, attempt.n, outcome.cause, outcome.detail,
                 decision.message)
        if decision.action == "restart":
            when = now + decision.delay
            # Which checkpoint the relaunch will take (verified again at launch; this is the preview for people).
            preview = choose_resume(live_checkpoints(jl.manifest), str(supervision.resume_from),
                                    verify=lambda entry: None).entry
            facts: dict[str, Any] = dict(
                cause=outcome.cause.value, detail=outcome.detail, attempt=attempt.n + 1, restarts=job.restarts + 1,
                max_restarts=int(supervision.max_restarts), delay_s=decision.delay, message=decision.message,
                gpus=attempt.gpus, logs=str(al.stderr), resumed_from=preview.path if preview else None,
                resumed_step=preview.step if preview else None, resumed_score=preview.score if preview else None,
                last_step=step)
            what = (HangAlert(**facts, stacks=str(al.stacks) if al.stacks.exists() else None)
                    if outcome.cause is Cause.HANG else RestartAlert(**facts))
            # The alert is committed with the restart (the outbox), then sent: a daemon killed in between sends
            # it on its next start.
            job = store.transition(job.id, JobState.BACKOFF, now=now, attempt=attempt.n, kind=EventKind.RESTART,
                                   message=decision.message, next_start_at=when, restarts=job.restarts + 1,
                                   stop_intent=None, stop_deadline=None, detail=outcome.detail,
                                   data={"cause": outcome.cause, "delay": decision.delay},
                                   alert=OutboxAlert(what.event, what.details()))
            self.send_pending_alerts()
            if decision.delay > 0:
                self.timers.schedule(job.id, TimerKind.BACKOFF, when)
            else:
                self.wake_job(job.id)
            return
        assert decision.state is not None and decision.end_reason is not None
        self.finish(job, decision.state, decision.end_reason, decision.message, now)

    def finish(self, job: JobRow, state: JobState, end_reason: str, message: str, now: float) -> JobRow:
        """End the job for good: link its best checkpoint, record it, drop its timers and caches, alert."""
        store = self._store()
        best = self.best_checkpoint(job)
        result = best.path if best else None
        if result:
            link = Path(job.job_dir) / "best.ckpt"
            try:
                tmp = link.with_name(".best.ckpt.tmp")
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(result)
                os.replace(tmp, link)
            except OSError as exc:
                log.warning("job %s: cannot link best.ckpt: %s", job.id, exc)
        kind = {JobState.FAILED: FailedAlert, JobState.STOPPED: StoppedAlert}.get(
            state, BudgetAlert if end_reason == EndReason.BUDGET else CompletedAlert)
        what = kind(
            end_reason=str(end_reason), message=message, attempts=len(store.attempts(job.id)), restarts=job.restarts,
            best_checkpoint=result, best_score=best.score if best else None, best_step=best.step if best else None,
            monitor=best.monitor if best else None,
            elapsed_s=(now - job.first_started_at) if job.first_started_at else None, budget_s=job.budget_s)
        job = store.transition(job.id, state, now=now, message=message, end_reason=end_reason,
                               best_checkpoint=result, detail=message, stop_intent=None, stop_deadline=None,
                               next_start_at=None, data={"end_reason": end_reason, "best_checkpoint": result},
                               alert=OutboxAlert(what.event, what.details()))  # committed with the ending
        self.forget(job.id)
        self.send_pending_alerts()
        log.info("job %s: %s (%s)", job.id, state.value, end_reason)
        return job

    def forget(self, job_id: str) -> None:
        """The job finished: cancel its timers, unwatch its files, close every handle on it."""
        self.timers.cancel_all(job_id)
        if self._checkpoints is not None:
            self._checkpoints.unwatch(job_id)
        for runner in self.runners.values():
            runner.forget(job_id)
        self.tracker.forget(job_id)
        self.drop_standby(job_id)

    def best_checkpoint(self, job: JobRow) -> CheckpointEntry | None:
        """The best live checkpoint of the job's current timeline (a manifest entry), or None."""
        ranked = rank_best(live_checkpoints(JobLayout(Path(job.job_dir)).manifest))
        return ranked[0] if ranked else None

    def _checkpoints_changed(self, job_id: str) -> None:
        """The manifest grew: record the new checkpoints; nothing else about the job changed."""
        store = self._store()
        try:
            job = store.get_job(job_id)
        except SupervisorError:
            return
        attempt = store.last_attempt(job_id)
        if attempt is not None and attempt.live:
            self._note_checkpoints(job, attempt)

    def _note_checkpoints(self, job: JobRow, attempt: AttemptRow) -> None:
        """Turn new manifest lines into events (for ``supervisorctl events`` and the web page)."""
        tracked = self.tracker.get(job.id, attempt.n)
        if tracked is None:
            return
        manifest = JobLayout(Path(job.job_dir)).manifest
        new, tracked.manifest_offset = read_json_lines_from(manifest, tracked.manifest_offset)
        for entry in new:
            if entry.get("event") == "save":
                score = entry.get("score")
                shown = f" {entry.get('monitor')}={score:.4g}" if score is not None else ""
                self._store().add_event(job.id, EventKind.CHECKPOINT, f"checkpoint at step {entry.get('step')}{shown}",
                                        attempt=attempt.n, durable=False,
                                        data={"path": entry.get("path"), "step": entry.get("step"), "score": score,
                                              "kind": entry.get("kind")})
