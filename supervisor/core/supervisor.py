"""``Supervisor``: the facade over the core's parts, and the one place that builds them.

One thread (the loop) owns every decision and every write to the store; other
threads only put work on its queue. ``open()`` takes the state dir's lock,
opens the store and builds the parts, each with its collaborators passed in
(no part reaches another through a shared base). The same core serves the
daemon (``ml-supervisor serve``) and a foreground run (``ml-supervisor run``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig

from supervisor.core.context import CoreContext
from supervisor.core.elastic import Growing
from supervisor.core.ending import Ending
from supervisor.core.file_waits import poll_or_wait
from supervisor.core.following import Following
from supervisor.core.gpu_actions import GpuActions, close_gpu_monitor, open_gpu_monitor
from supervisor.core.launching import Launching
from supervisor.core.loop import Loop
from supervisor.core.outbox import AlertHook, Outbox
from supervisor.core.placement import Placement
from supervisor.core.polling import Polling
from supervisor.core.rank_watch import RankWatch
from supervisor.core.reconciling import Reconciling, Verdict
from supervisor.core.requests import Requests
from supervisor.core.retention import RetentionKeeper
from supervisor.core.runner_set import RunnerSet
from supervisor.core.schedules import Schedules
from supervisor.core.standby_keeping import StandbyKeeper
from supervisor.core.stopping import Stopping
from supervisor.core.submit import SubmitRequest, prepare_job
from supervisor.core.timers import Timers
from supervisor.core.tracking import AttemptTracker
from supervisor.errors import AlreadyRunning
from supervisor.gpu import GpuEvent, GpuMonitor
from supervisor.processes.boot import current_boot_id
from supervisor.processes.control import try_lock
from supervisor.processes.watcher import CheckpointWatcher
from supervisor.rules.causes import Cause
from supervisor.runners.backend import RunnerContext
from supervisor.runners.base import AttemptRunner, RunnerNotice
from supervisor.runners.registry import build_runners
from supervisor.settings import DaemonSettings
from supervisor.store import JobRow, OutboxAlert, Store
from supervisor.store.schedules import ScheduleRow

T = TypeVar("T")

__all__ = ["AlertHook", "RunnerFactory", "Supervisor"]

# Replaces a backend's runner (tests drive the core with a fake one): the supervisor -> the runner.
RunnerFactory = Callable[["Supervisor"], AttemptRunner]


@dataclass(frozen=True)
class _Parts:
    """The core once open: every part, built in dependency order (leaves first)."""

    ctx: CoreContext
    runners: RunnerSet
    outbox: Outbox
    following: Following
    keeper: StandbyKeeper
    ending: Ending
    stopping: Stopping
    reconciling: Reconciling
    placement: Placement
    launching: Launching
    gpu_actions: GpuActions
    polling: Polling
    requests: Requests
    schedules: Schedules


class Supervisor:
    """The core. ``open()`` it, then drive it with ``run()`` (a thread) or ``tick()`` (tests)."""

    def __init__(self, settings: DaemonSettings, *, clock: Callable[[], float] = time.time,
                 boot_id: str | None = None, alert_hook: AlertHook | None = None,
                 runners: Mapping[str, RunnerFactory] | None = None) -> None:
        assert settings.state_dir, "settings.state_dir must be resolved"
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.clock = clock
        self._boot_id = boot_id or current_boot_id()
        self._alert_hook = alert_hook
        self._runner_overrides = dict(runners or {})  # backend name -> factory
        self.tracker = AttemptTracker()
        self.timers = Timers(clock, self.wake_job)
        self.loop = Loop(poll=self.poll_job, tick=self.tick, timers=self.timers, clock=clock,
                         tick_interval=settings.tick_interval)
        self.loop.handlers.update(checkpoints=self._checkpoints_changed, gpu=self.on_gpu_event)
        self._parts: _Parts | None = None
        self._lock_fd: int | None = None
        self._retention: RetentionKeeper | None = None

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
        """Take the state dir's lock, open the store, build the parts, reconcile every job, start watching."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock_fd = try_lock(self.state_dir / "daemon.lock")
        if self._lock_fd is None:
            raise AlreadyRunning(f"another ml-supervisor already uses {self.state_dir}")
        store = Store(self.state_dir / "supervisor.db")
        gpus = open_gpu_monitor(self.settings, self.state_dir, lambda event: self.loop.put("gpu", event))
        checkpoints = None
        if self.settings.watch_files:
            checkpoints = CheckpointWatcher(lambda job_id: self.loop.put("checkpoints", job_id))
            checkpoints.start()
        ctx = CoreContext(settings=self.settings, state_dir=self.state_dir, clock=self.clock, boot_id=self._boot_id,
                          store=store, loop=self.loop, timers=self.timers, tracker=self.tracker, gpus=gpus,
                          checkpoints=checkpoints)
        runners = build_runners(RunnerContext(state_dir=self.state_dir, notify=self.on_runner_notice,
                                              settings=self.settings,
                                              gpu_backend=lambda: gpus.backend if gpus is not None else None))
        for name, factory in self._runner_overrides.items():
            runners.pop(name).close()
            runners[name] = factory(self)
        self._parts = parts = _assemble(ctx, RunnerSet(runners), Outbox(store, self.clock, self._alert_hook))
        parts.reconciling.reconcile()
        parts.outbox.send_pending()  # what a killed daemon committed and had not sent yet
        for job in store.active_jobs():  # indexed: finished jobs are never read here
            parts.following.schedule_timers(job)
        self._retention = RetentionKeeper(self.settings.retention, store, self.call, self.clock)
        self._retention.start()
        parts.schedules.start()  # scheduled runs: timers, and a fire a killed daemon left half done

    def close(self) -> None:
        """Stop watching and release the state dir. Running trainers are left running, on purpose."""
        self.loop.stop()
        if self._retention is not None:
            self._retention.stop()
        if self._parts is not None:
            self._parts.runners.close()
            if self._parts.ctx.checkpoints is not None:
                self._parts.ctx.checkpoints.stop()
            close_gpu_monitor(self._parts.ctx.gpus)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def start_thread(self) -> threading.Thread:
        """Run the loop in a background thread (the foreground run and the daemon both do)."""
        return self.loop.start_thread()

    def run(self) -> None:
        """The loop (see ``Loop.run``)."""
        self.loop.run()

    @property
    def parts(self) -> _Parts:
        if self._parts is None:
            raise RuntimeError("Supervisor.open() was not called")
        return self._parts

    # -- what callers read ---------------------------------------------------------------------------
    @property
    def boot_id(self) -> str:
        """This boot's id, as the core compares attempts' boots with it."""
        return self._boot_id

    @boot_id.setter
    def boot_id(self, boot_id: str) -> None:
        self._boot_id = boot_id
        if self._parts is not None:
            self._parts.ctx.boot_id = boot_id

    @property
    def alert_hook(self) -> AlertHook | None:
        """Where alerts go (the daemon's W&B dispatcher)."""
        return self._alert_hook

    @alert_hook.setter
    def alert_hook(self, hook: AlertHook | None) -> None:
        self._alert_hook = hook
        if self._parts is not None:
            self._parts.outbox.hook = hook

    @property
    def store(self) -> Store | None:
        """The job store (None until ``open()``)."""
        return self._parts.ctx.store if self._parts is not None else None

    @property
    def gpus(self) -> GpuMonitor | None:
        """The GPU monitor (None without NVML, or until ``open()``)."""
        return self._parts.ctx.gpus if self._parts is not None else None

    def job_config(self, job: JobRow) -> DictConfig:
        """The frozen config of a job (cached while it runs; a finished job's from a bounded LRU: the alert of
        its ending reads it after the job was forgotten, and must not keep it for good)."""
        if job.state.terminal:
            return self.tracker.finished_config(job.id, job.job_dir)
        return self.tracker.config(job.id, job.job_dir)

    def gpu_count(self) -> int | None:
        """GPUs on this node; None when there is no NVML (GPU features off)."""
        return self.gpus.count() if self.gpus is not None else None

    def gpu_jobs(self) -> dict[int, str]:
        """GPU index -> job holding it."""
        return self.parts.ctx.gpu_jobs()

    # -- thread-safe entry points --------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise its error)."""
        return self.loop.call(fn, *args, timeout=timeout)

    def wake_job(self, job_id: str) -> None:
        """Ask the loop to look at one job soon (thread-safe, coalesced)."""
        self.loop.wake_job(job_id)

    def on_runner_notice(self, notice: RunnerNotice) -> None:
        """A runner saw something happen to a job's attempt (any thread): look at the job now."""
        self.wake_job(notice.job_id)

    def submit(self, req: SubmitRequest, *, owner_uid: int | None = None) -> JobRow:
        """Validate and freeze a job for ``owner_uid`` (default: the daemon's user), then queue it.

        Thread-safe. The slow part (the import check in a subprocess) runs in the
        caller's thread, beside attempt 1's standby; only the insert runs on the loop.
        """
        requests = self.parts.requests
        job, _cfg = prepare_job(req, jobs_dir=self.jobs_dir, trainer_module=self.settings.trainer_module,
                                gpu_count=self.gpu_count(), check_timeout=self.settings.check_timeout,
                                now=self.clock(), owner_uid=owner_uid,
                                while_checking=self._first_standby_while_checking)
        return self.call(requests.register, job, req)

    def schedule(self, req: SubmitRequest, *, at: str | None = None, cron: str | None = None,
                 timezone: str | None = None, misfire: str = "run_once", owner_uid: int | None = None) -> ScheduleRow:
        """Keep a scheduled run (``at`` a time) or a recurring one (``cron``) of ``req``, checked as a submit is.

        Thread-safe; the checks run in the caller's thread, the insert on the loop (``core/schedules.py``).
        """
        return self.parts.schedules.create(req, at=at, cron=cron, timezone=timezone, misfire=misfire,
                                           owner_uid=os.getuid() if owner_uid is None else owner_uid)

    def unschedule(self, schedule_id: str, *, owner_uid: int | None = None) -> ScheduleRow:
        """No more runs of a schedule (``owner_uid``: only that user's schedules exist). Loop thread."""
        return self.parts.schedules.remove(schedule_id, owner_uid=owner_uid)

    def _first_standby_while_checking(self, job: JobRow) -> Callable[[], None] | None:
        requests = self.parts.requests
        if not self.call(requests.start_first_standby_unless_queued, job):
            return None
        return lambda: self.call(requests.drop_first_standby, job.id)

    # -- operations (loop thread) --------------------------------------------------------------
    def stop_job(self, job_id: str, *, intent: Cause = Cause.USER_STOP, detail: str = "stopped by the user") -> JobRow:
        """Stop a job for good (gracefully: the runner's graceful stop, a grace period, a kill)."""
        return self.parts.requests.stop_job(job_id, intent=intent, detail=detail)

    def restart_job(self, job_id: str) -> JobRow:
        """Relaunch from the best checkpoint: a live job is stopped first; a finished one is queued again."""
        return self.parts.requests.restart_job(job_id)

    def begin_stop(self, job: JobRow, intent: Cause, detail: str, now: float,
                   alert: OutboxAlert | None = None) -> JobRow:
        """Stop the job's live attempt gracefully."""
        return self.parts.stopping.begin_stop(job, intent, detail, now, alert)

    def reconcile(self) -> dict[str, Verdict]:
        """Adopt, collect or relaunch every live attempt (``open`` does it once); the verdict per job."""
        return self.parts.reconciling.reconcile()

    def clear_gpu(self, index: int) -> bool:
        """Lift a GPU's quarantine (operator's call) and let waiting jobs try again."""
        return self.parts.gpu_actions.clear_gpu(index)

    def on_gpu_event(self, event: GpuEvent) -> None:
        """Act on a GPU event (loop thread)."""
        self.parts.gpu_actions.on_gpu_event(event)

    def tick(self) -> None:
        """Fire due timers and poll every unfinished job."""
        self.parts.polling.tick()

    def poll_job(self, job_id: str, job: JobRow | None = None) -> None:
        """Look at one job and act."""
        poll_or_wait(self.parts.polling.poll_job, self.parts.ctx, job_id, job)  # files that do not answer: it waits

    def _checkpoints_changed(self, job_id: str) -> None:
        self.parts.following.checkpoints_changed(job_id)


def _assemble(ctx: CoreContext, runners: RunnerSet, outbox: Outbox) -> _Parts:
    """Build the parts, leaves first; each gets only what it uses."""
    following = Following(ctx)
    keeper = StandbyKeeper(ctx, runners)
    ending = Ending(ctx, runners, outbox, keeper)
    stopping = Stopping(ctx, runners, ending)
    reconciling = Reconciling(ctx, runners, ending, following)
    placement = Placement(ctx, runners)
    launching = Launching(ctx, runners, keeper, placement, reconciling, following, outbox)
    requests = Requests(ctx, keeper, placement, stopping)
    return _Parts(ctx=ctx, runners=runners, outbox=outbox, following=following, keeper=keeper, ending=ending,
                  stopping=stopping, reconciling=reconciling, placement=placement, launching=launching,
                  gpu_actions=GpuActions(ctx, runners, stopping, outbox),
                  polling=Polling(ctx, runners, launching=launching, stopping=stopping, ending=ending, keeper=keeper,
                                  following=following, rank_watch=RankWatch(ctx, stopping, outbox),
                                  growing=Growing(ctx, runners, stopping)),
                  requests=requests, schedules=Schedules(ctx, requests))
