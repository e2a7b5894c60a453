"""The supervisor core: one loop that launches, watches, stops and relaunches jobs.

One thread (the loop) owns every decision and every write to the store. Other
threads only put work on its queue: file events (watchdog), timers
(APScheduler: budget deadlines, backoff ends, stop escalation), API requests
and signal handlers. ``tick()`` polls every job; tests call it directly.

The same core serves the daemon (``ml-supervisor serve``) and a foreground run
(``ml-supervisor run``).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.background import BackgroundScheduler
from omegaconf import DictConfig

from supervisor import policy as restart_policy
from supervisor.attempt_monitor import current_boot_id
from supervisor.config import load_job_config, parse_duration
from supervisor.errors import AlreadyRunning, InvalidTransition, SupervisorError
from supervisor.gpu import GpuEvent, GpuMonitor, GpuThresholds, allocate, cuda_environment, open_backend, preflight
from supervisor.hang import HangSettings, check_hang, update_slowest_step
from supervisor.jobfiles.atomic import read_json, read_json_lines, read_json_lines_from
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best
from supervisor.outcome import classify_end
from supervisor.process import (
    ProcessHandle,
    is_alive,
    kill_tree,
    reap_monitors,
    signal_process,
    spawn_attempt_monitor,
    try_lock,
)
from supervisor.resume import choose_resume
from supervisor.settings import DaemonSettings
from supervisor.stacks import dump_stacks
from supervisor.states import LIVE_STATES, JobState
from supervisor.store import AttemptRow, JobRow, Store
from supervisor.submit import SubmitRequest, prepare_job, trainer_environment
from supervisor.watcher import CheckpointWatcher, ExitWatcher

log = logging.getLogger("ml_supervisor")
T = TypeVar("T")

STACK_DUMP_TIMEOUT_S = 5.0
STUCK_GRACE_S = 5.0

# Alert hook: (event, job, details) -> None. Wired to the W&B alert dispatcher by the daemon.
AlertHook = Callable[[str, JobRow, dict[str, Any]], None]


@dataclass
class _Tracked:
    """What the loop remembers about a job's live attempt between polls (rebuilt after a restart)."""

    attempt: int
    slowest_step: float | None = None
    manifest_offset: int = 0  # bytes of the manifest already turned into events
    hang_setting: str | None = None


class Supervisor:
    """The core. ``open()`` it, then drive it with ``run()`` (a thread) or ``tick()`` (tests)."""

    def __init__(self, settings: DaemonSettings, *, clock: Callable[[], float] = time.time,
                 boot_id: str | None = None, alert_hook: AlertHook | None = None) -> None:
        assert settings.state_dir, "settings.state_dir must be resolved"
        self.settings = settings
        self.state_dir = Path(settings.state_dir)
        self.jobs_dir = self.state_dir / "jobs"
        self.clock = clock
        self.boot_id = boot_id or current_boot_id()
        self.alert_hook = alert_hook
        self.store: Store | None = None
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._handles: dict[tuple[str, int], ProcessHandle] = {}  # attempt monitors, pinned by pidfd
        self._configs: dict[str, DictConfig] = {}
        self._scheduler = BackgroundScheduler(daemon=True, job_defaults={"misfire_grace_time": None})
        self.gpus: GpuMonitor | None = None
        self._exits: ExitWatcher | None = None
        self._checkpoints: CheckpointWatcher | None = None
        self._lock_fd: int | None = None
        hang = settings.hang
        self._hang_settings = HangSettings(startup_allowance_s=hang.startup_allowance,
                                           phase_allowance_s=hang.phase_allowance, multiple=hang.multiple,
                                           minimum_s=hang.min_timeout)
        self._stop = threading.Event()
        # Called on the loop thread at every turn (at least once a second): the systemd watchdog ping.
        self.on_loop: Callable[[], None] | None = None
        # Longest idle wait of the loop, so on_loop runs at least this often (the daemon shortens
        # it to the systemd watchdog's ping interval).
        self.loop_wait = settings.tick_interval
        self._loop_thread: threading.Thread | None = None

    # -- life cycle ------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the state dir's lock, open the store, reconcile every job, start watching."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        self._lock_fd = try_lock(self.state_dir / "daemon.lock")
        if self._lock_fd is None:
            raise AlreadyRunning(f"another ml-supervisor already uses {self.state_dir}")
        self.store = Store(self.state_dir / "supervisor.db")
        if self.settings.watch_files:
            self._exits = ExitWatcher(self.wake_job)
            self._exits.start()
            self._checkpoints = CheckpointWatcher(lambda job_id: self._queue.put(("checkpoints", job_id)))
            self._checkpoints.start()
        self._scheduler.start()
        self._start_gpu_monitor()
        self.reconcile()
        for job in self.store.list_jobs():
            if not job.state.terminal:
                self._schedule_timers(job)

    def close(self) -> None:
        """Stop watching and release the state dir. Running trainers are left running, on purpose."""
        self._stop.set()
        self._queue.put(("noop", None))
        if self._loop_thread is not None and self._loop_thread is not threading.current_thread():
            self._loop_thread.join(timeout=10)
        if self._exits is not None:
            self._exits.stop()
        if self._checkpoints is not None:
            self._checkpoints.stop()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        if self.gpus is not None:
            self.gpus.stop()
            self.gpus.backend.close()
            self.gpus = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def start_thread(self) -> threading.Thread:
        """Run the loop in a background thread (the foreground run and the daemon both do)."""
        self._loop_thread = threading.Thread(target=self.run, name="supervisor-loop", daemon=True)
        self._loop_thread.start()
        return self._loop_thread

    def run(self) -> None:
        """The loop: handle queued work as it comes; tick every ``tick_interval`` seconds."""
        next_tick = 0.0
        while not self._stop.is_set():
            if self.on_loop is not None:
                try:
                    self.on_loop()
                except Exception:
                    log.exception("error in the loop hook")
            timeout = max(0.0, min(next_tick - time.monotonic(), self.loop_wait))
            try:
                kind, payload = self._queue.get(timeout=timeout)
            except queue.Empty:
                kind, payload = "noop", None
            try:
                self._handle(kind, payload)
            except Exception:  # the loop must survive any single failure
                log.exception("error while handling %s %r", kind, payload)
            if time.monotonic() >= next_tick:
                try:
                    self.tick()
                except Exception:
                    log.exception("error in tick")
                next_tick = time.monotonic() + self.settings.tick_interval

    # -- thread-safe entry points --------------------------------------------------------------
    def wake_job(self, job_id: str) -> None:
        """Ask the loop to look at one job soon (coalesced: many events, one poll)."""
        with self._pending_lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(("job", job_id))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise its error)."""
        if threading.current_thread() is self._loop_thread or self._loop_thread is None:
            return fn(*args)
        future: Future[T] = Future()
        self._queue.put(("call", (fn, args, future)))
        return future.result(timeout=timeout)

    def _handle(self, kind: str, payload: Any) -> None:
        if kind == "job":
            with self._pending_lock:
                self._pending.discard(payload)
            self.poll_job(payload)
        elif kind == "checkpoints":
            self._checkpoints_changed(payload)
        elif kind == "gpu":
            self.on_gpu_event(payload)
        elif kind == "call":
            fn, args, future = payload
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

    # -- operations (loop thread) --------------------------------------------------------------
    def submit(self, req: SubmitRequest) -> JobRow:
        """Validate and freeze a job, then queue it.

        Thread-safe. The slow part (the import check in a subprocess) runs in the
        caller's thread; only the insert runs on the loop.
        """
        job, _cfg = prepare_job(req, jobs_dir=self.jobs_dir, trainer_module=self.settings.trainer_module,
                                gpu_count=self.gpu_count(), check_timeout=self.settings.check_timeout,
                                now=self.clock())
        return self.call(self._register, job, req)

    def _register(self, job: JobRow, req: SubmitRequest) -> JobRow:
        self._store().insert_job(job, message=f"submitted {job.name} from {job.config_source}",
                                 data={"config_source": job.config_source, "overrides": req.overrides})
        log.info("job %s submitted (%s)", job.id, job.config_source)
        self.wake_job(job.id)
        return job

    def stop_job(self, job_id: str, *, intent: str = "user_stop", detail: str = "stopped by the user") -> JobRow:
        """Stop a job for good (gracefully: SIGTERM, grace, SIGKILL)."""
        store = self._store()
        job = store.get_job(job_id)
        now = self.clock()
        if job.state.terminal:
            raise InvalidTransition(f"job {job.id} is already {job.state.value}")
        if job.state in (JobState.QUEUED, JobState.BACKOFF):
            state = JobState.COMPLETED if intent == "budget" else JobState.STOPPED
            reason = "budget" if intent == "budget" else "user"
            return self._finish(job, state, reason, detail, now)
        if job.state is JobState.STOPPING:
            return job
        return self._begin_stop(job, intent, detail, now)

    def restart_job(self, job_id: str) -> JobRow:
        """Relaunch from the best checkpoint: a live job is stopped first; a finished one is queued again."""
        store = self._store()
        job = store.get_job(job_id)
        now = self.clock()
        if job.state.terminal:
            job = store.transition(job.id, JobState.QUEUED, now=now, message="queued again by the user",
                                   kind="requeued", end_reason=None, ended_at=None, next_start_at=None)
            self.wake_job(job.id)
            return job
        if job.state in (JobState.RUNNING, JobState.STARTING):
            return self._begin_stop(job, "user_restart", "restart requested by the user", now)
        if job.state is JobState.BACKOFF:
            store.update_job(job.id, now=now, next_start_at=now)
            self.wake_job(job.id)
        return store.get_job(job.id)

    def gpu_count(self) -> int | None:
        """GPUs on this node; None when there is no NVML (GPU features off)."""
        return self.gpus.count() if self.gpus is not None else None

    def gpu_jobs(self) -> dict[int, str]:
        """GPU index -> id of the job whose live attempt holds it."""
        store = self._store()
        busy: dict[int, str] = {}
        for job in store.list_jobs(states=list(LIVE_STATES)):
            attempt = store.last_attempt(job.id)
            if attempt is not None and attempt.live:
                busy.update({g: job.id for g in attempt.gpus})
        return busy

    def clear_gpu(self, index: int) -> bool:
        """Lift a GPU's quarantine (operator's call) and let waiting jobs try again."""
        if self.gpus is None:
            return False
        cleared = self.gpus.clear(index)
        self._store().add_event(None, "gpu", f"gpu {index}: quarantine cleared by the operator",
                                data={"index": index, "cleared": cleared})
        self._wake_queued()
        return cleared

    # -- the poll ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Poll every job that is not finished (the safety net under file events and timers)."""
        reap_monitors()
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
            if self._budget_spent(job, now):
                self._finish(job, JobState.COMPLETED, "budget", "the time budget was spent", now)
            elif job.state is JobState.QUEUED or (job.next_start_at or 0) <= now:
                self._launch(job, now)
            return
        attempt = store.last_attempt(job.id)
        if attempt is None or not attempt.live:
            log.error("job %s is %s without a live attempt; relaunching", job.id, job.state.value)
            store.transition(job.id, JobState.BACKOFF, now=now, message="no live attempt found", next_start_at=now)
            return
        layout = JobLayout(Path(job.job_dir)).attempt(attempt.n)
        monitor_exit = read_json(layout.monitor_exit)
        if monitor_exit is not None:
            self._on_attempt_end(job, attempt, monitor_exit, now)
            return
        if job.state is JobState.STARTING:
            started = read_json(layout.monitor_start)
            if started is not None:
                store.update_attempt(job.id, attempt.n, pid=started["trainer_pid"], pgid=started["pgid"],
                                     boot_id=started.get("boot_id"))
                job = store.transition(job.id, JobState.RUNNING, now=now, attempt=attempt.n,
                                       message=f"attempt {attempt.n} running (pid {started['trainer_pid']})",
                                       data={"pid": started["trainer_pid"]})
                attempt = store.last_attempt(job.id) or attempt
            elif not self._monitor_alive(job.id, attempt):
                self._on_attempt_end(job, attempt, None, now)
                return
            else:
                return
        if not self._monitor_alive(job.id, attempt):
            # The monitor writes its exit file before it exits: read again to close the race.
            monitor_exit = read_json(layout.monitor_exit)
            if monitor_exit is None:
                kill_tree(None, attempt.pgid)
            self._on_attempt_end(job, attempt, monitor_exit, now)
            return
        self._note_checkpoints(job, attempt)
        if job.state is JobState.STOPPING:
            if job.stop_deadline is not None and now >= job.stop_deadline:
                victims = kill_tree(attempt.monitor_pid, attempt.pgid)
                store.update_job(job.id, now=now, stop_deadline=None)
                store.add_event(job.id, "sigkill", f"grace period over: SIGKILL to {len(victims)} processes",
                                now=now, attempt=attempt.n, data={"pids": victims})
            return
        if self._budget_spent(job, now):
            self._begin_stop(job, "budget", "the time budget was spent", now)
            return
        self.check_attempt_health(job, attempt, now)

    def check_attempt_health(self, job: JobRow, attempt: AttemptRow, now: float) -> None:
        """Hang detection: no progress in the heartbeat for longer than the attempt's timeout."""
        layout = JobLayout(Path(job.job_dir)).attempt(attempt.n)
        tracked = self._tracked.get(job.id)
        if tracked is None or tracked.attempt != attempt.n:
            tracked = self._tracked[job.id] = _Tracked(attempt=attempt.n)
        beat = read_heartbeat(layout.heartbeat)
        tracked.slowest_step = update_slowest_step(tracked.slowest_step, beat)
        if tracked.hang_setting is None:  # OmegaConf access is slow; read the setting once per attempt
            tracked.hang_setting = str(self.job_config(job).supervision.hang_timeout)
        verdict = check_hang(now=now, attempt_started_at=attempt.started_at, heartbeat=beat,
                             slowest_step_s=tracked.slowest_step, setting=tracked.hang_setting,
                             settings=self._hang_settings)
        if verdict.hung:
            self._begin_stop(job, "hang", f"hang: {verdict.reason}", now)

    # -- launching -------------------------------------------------------------------------------
    def _launch(self, job: JobRow, now: float) -> None:
        store = self._store()
        cfg = self.job_config(job)
        jl = JobLayout(Path(job.job_dir))
        gpus = self.allocate_gpus(job, cfg, now)
        if gpus is None:
            return
        choice = choose_resume(live_checkpoints(jl.manifest), str(cfg.supervision.resume_from))
        for path, why in choice.skipped:
            store.add_event(job.id, "checkpoint_rejected", f"not resuming from {path}: {why}", now=now,
                            data={"path": path, "why": why})
        last = store.last_attempt(job.id)
        n = (last.n if last else 0) + 1
        lock_fd = try_lock(jl.lock)
        if lock_fd is None:
            # A trainer of this job is still alive somewhere (its monitor holds the lock): never start a second.
            store.update_job(job.id, now=now, wait_reason="another trainer of this job still holds its lock")
            log.warning("job %s: lock held by a live trainer; not launching attempt %d", job.id, n)
            return
        first_started_at = job.first_started_at or now
        command = [str(cfg.python), "-m", self.settings.trainer_module, "--config", str(jl.config),
                   "--attempt-dir", str(jl.attempt(n).dir), "--checkpoint-dir", str(jl.checkpoints),
                   "--attempt", str(n), "--restarts", str(job.restarts)]
        if choice.path:
            command += ["--ckpt", choice.path]
        deadline = self._deadline(job, first_started_at)
        if deadline is not None:
            command += ["--deadline", f"{deadline:.3f}"]
        env = trainer_environment(cfg, Path(job.workdir))
        env.update({"ML_SUPERVISOR_JOB_ID": job.id, "ML_SUPERVISOR_ATTEMPT": str(n),
                    "ML_SUPERVISOR_RESTARTS": str(job.restarts), "ML_SUPERVISOR_BOOT_ID": self.boot_id})
        env["ML_SUPERVISOR_STATE_DIR"] = str(self.state_dir)  # also marks our processes for pre-flight
        # CUDA numbers GPUs like NVML only in PCI order; an empty list keeps a CPU job off every GPU.
        env.update(cuda_environment(gpus))
        try:
            monitor_pid, monitor_started = spawn_attempt_monitor(jl.attempt(n), command, cwd=job.workdir, env=env,
                                                                 lock_fd=lock_fd)
        except OSError as exc:
            store.add_event(job.id, "launch_failed", f"cannot start attempt {n}: {exc}", now=now)
            store.transition(job.id, JobState.BACKOFF, now=now, message=f"launch failed: {exc}",
                             next_start_at=now + 10)
            return
        finally:
            os.close(lock_fd)
        store.insert_attempt(AttemptRow(job_id=job.id, n=n, started_at=now, monitor_pid=monitor_pid,
                                        monitor_started=monitor_started, boot_id=self.boot_id, gpus=gpus,
                                        resumed_from=choice.path))
        resumed = f"from {Path(choice.path).name} ({choice.rule})" if choice.path else "from scratch"
        store.transition(job.id, JobState.STARTING, now=now, attempt=n, kind="launch",
                         message=f"attempt {n} starting {resumed}",
                         data={"resumed_from": choice.path, "rule": choice.rule, "gpus": gpus},
                         first_started_at=first_started_at, next_start_at=None, wait_reason=None,
                         stop_intent=None, stop_deadline=None)
        self._watch(job.id, n, jl, monitor_pid, monitor_started)
        # The monitor reports the trainer's pid within milliseconds: look again soon rather than at the tick.
        self._schedule(job.id, "started", now + 0.2)
        self._schedule_timers(store.get_job(job.id))
        log.info("job %s: attempt %d started %s", job.id, n, resumed)

    def allocate_gpus(self, job: JobRow, cfg: DictConfig, now: float) -> list[int] | None:
        """Healthy, free, clean GPUs for the next attempt ([] for a CPU job); None keeps the job queued."""
        n = job.gpus_requested
        if n == 0:
            return []
        if self.gpus is None:
            self._wait(job, now, "no NVML on this node: GPU jobs cannot be placed")
            return None
        busy = self.gpu_jobs()
        gpus = allocate(n, self.gpus.allocatable(), busy)
        if gpus is None:
            free = [g for g in self.gpus.allocatable() if g not in busy]
            self._wait(job, now, f"waiting for {n} free healthy GPU{'s' if n > 1 else ''} "
                                 f"({len(free)} of {self.gpus.count()} free)")
            return None
        own = {a.pid for a in self._store().attempts(job.id) if a.pid}
        # Short wait inside the loop; a job still blocked is retried at the next tick.
        check = preflight(gpus, self.gpus.backend, own, kill_own=True, wait_s=self.settings.gpu.preflight_wait,
                          own_env_key="ML_SUPERVISOR_STATE_DIR", own_env_value=str(self.state_dir))
        if check.killed:
            self._store().add_event(job.id, "preflight", f"killed {len(check.killed)} orphan(s) of earlier attempts "
                                    f"on GPU {','.join(map(str, gpus))}", now=now, data={"pids": check.killed})
        if not check.ok:
            self._wait(job, now, check.reason)
            return None
        return gpus

    def _wait(self, job: JobRow, now: float, reason: str) -> None:
        """Keep (or put) the job in ``queued`` with a reason people can read."""
        store = self._store()
        if job.state is JobState.QUEUED:
            if job.wait_reason != reason:
                store.update_job(job.id, now=now, wait_reason=reason)
                store.add_event(job.id, "waiting", reason, now=now)
        else:
            store.transition(job.id, JobState.QUEUED, now=now, message=reason, kind="waiting", wait_reason=reason)

    def _wake_queued(self) -> None:
        for job in self._store().list_jobs(states=[JobState.QUEUED]):
            self.wake_job(job.id)

    # -- GPU health ------------------------------------------------------------------------------
    def _start_gpu_monitor(self) -> None:
        backend = open_backend()
        if backend is None:
            return
        gpu = self.settings.gpu
        thresholds = GpuThresholds(temperature_degraded_c=gpu.temperature_degraded_c,
                                   temperature_failed_c=gpu.temperature_failed_c)
        self.gpus = GpuMonitor(backend, self.state_dir / "gpu-quarantine.json", thresholds,
                               on_event=lambda event: self._queue.put(("gpu", event)),
                               poll_interval_s=gpu.poll_interval)
        self.gpus.start()

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
            store.add_event(job_id, "xid", f"gpu {event.index}: {event.reason}", now=now, data=data)
            return
        store.add_event(job_id, "gpu", event.reason, now=now, data=data)
        if event.health == "healthy":
            self._wake_queued()
            return
        if job_id is None:
            return
        job = store.get_job(job_id)
        attempt = store.last_attempt(job_id)
        if event.health == "failed" and job.state in (JobState.RUNNING, JobState.STARTING):
            detail = f"gpu fault: {event.reason}"
            self._begin_stop(job, "gpu_fault", detail, now)
            self._alert("gpu_fault", job, {"gpu": event.index, "fault": event.reason,
                                           "quarantined": event.quarantined,
                                           "attempt": attempt.n if attempt else None})
        elif event.health == "degraded" and attempt is not None and attempt.live and attempt.pid:
            # SIGUSR1: the trainer saves a checkpoint at its next step and goes on, so less is lost if it fails
            signal_process(attempt.pid, signal.SIGUSR1)
            store.add_event(job_id, "checkpoint_requested", f"asked for a checkpoint: {event.reason}", now=now,
                            attempt=attempt.n)

    # -- stopping ----------------------------------------------------------------------------------
    def _begin_stop(self, job: JobRow, intent: str, detail: str, now: float) -> JobRow:
        store = self._store()
        attempt = store.last_attempt(job.id)
        grace = parse_duration(self.job_config(job).supervision.stop_grace)
        if intent in ("hang", "gpu_fault"):
            # A hung or GPU-stuck trainer cannot act on SIGTERM (its main thread is blocked): no long wait.
            grace = min(grace, STUCK_GRACE_S)
        if attempt is not None and attempt.live:
            if attempt.pgid is None:  # still starting: the monitor may have reported the trainer by now
                started = read_json(JobLayout(Path(job.job_dir)).attempt(attempt.n).monitor_start) or {}
                if started.get("pgid"):
                    store.update_attempt(job.id, attempt.n, pid=started["trainer_pid"], pgid=started["pgid"])
                    attempt = store.last_attempt(job.id) or attempt
            self.before_stop(job, attempt, intent)
            # SIGTERM to the trainer alone: DataLoader workers die at once on SIGTERM, and the
            # trainer, killed by their loss mid-step, could save nothing. The group gets SIGKILL
            # after the grace period (and the monitor clears what is left when the trainer exits).
            signal_process(attempt.pid, signal.SIGTERM)
        job = store.transition(job.id, JobState.STOPPING, now=now, message=f"stopping: {detail}",
                               attempt=attempt.n if attempt else None, stop_intent=intent,
                               stop_deadline=now + grace, detail=detail, data={"intent": intent})
        self._schedule(job.id, "escalate", now + grace)
        log.info("job %s: stopping (%s)", job.id, detail)
        return job

    def before_stop(self, job: JobRow, attempt: AttemptRow, intent: str) -> None:
        """Before SIGTERM on a hang: save every thread's stack (SIGUSR2 -> faulthandler; py-spy if present)."""
        if intent != "hang" or not attempt.pid:
            return
        attempt_dir = JobLayout(Path(job.job_dir)).attempt(attempt.n).dir
        # Bounded: faulthandler writes from C at once; the loop must not stall long for one job.
        files = dump_stacks(attempt.pid, attempt_dir, timeout_s=STACK_DUMP_TIMEOUT_S)
        self._store().add_event(job.id, "stacks", f"saved stacks: {', '.join(f.name for f in files) or 'none'}",
                                attempt=attempt.n, data={"files": [str(f) for f in files]})

    # -- an attempt ended ------------------------------------------------------------------------
    def _on_attempt_end(self, job: JobRow, attempt: AttemptRow, monitor_exit: dict[str, Any] | None,
                        now: float, *, intent: str | None = None, intent_detail: str | None = None) -> None:
        """Record how the attempt ended, ask the restart policy, and act on its decision."""
        store = self._store()
        jl = JobLayout(Path(job.job_dir))
        al = jl.attempt(attempt.n)
        record = read_exit_record(al.exit_record)
        if intent is None and job.stop_intent:
            intent, intent_detail = job.stop_intent, job.detail
        outcome = classify_end(record, monitor_exit, intent, intent_detail)
        ended_at = float(monitor_exit.get("ended_at", now)) if monitor_exit else now
        saves = [e for e in read_json_lines(jl.manifest) if e.get("event") == "save" and e.get("attempt") == attempt.n]
        beat = read_heartbeat(al.heartbeat)
        step = record.global_step if record is not None else (beat.step if beat else None)
        store.update_attempt(job.id, attempt.n, ended_at=ended_at, exit_code=outcome.exit_code,
                             signal=outcome.signal, reason=outcome.cause, detail=outcome.detail,
                             new_checkpoints=len(saves), global_step=step)
        self._tracked.pop(job.id, None)
        self._unschedule(job.id, "escalate")
        history = [restart_policy.PastAttempt(n=a.n, started_at=a.started_at, ended_at=a.ended_at, cause=a.reason,
                                              new_checkpoints=a.new_checkpoints)
                   for a in store.attempts(job.id) if a.n != attempt.n]
        decision = restart_policy.decide(
            restart_policy.AttemptEnd(cause=outcome.cause, ended_at=ended_at, new_checkpoints=len(saves),
                                      completion_reason=outcome.completion_reason),
            history, now=now, first_started_at=job.first_started_at or attempt.started_at,
            policy=restart_policy.RestartPolicy.from_config(self.job_config(job).supervision),
            counting_since=store.last_event_time(job.id, "requeued"))
        store.add_event(job.id, "attempt_ended", f"attempt {attempt.n} ended: {outcome.detail}", now=now,
                        attempt=attempt.n, data={"cause": outcome.cause, "exit_code": outcome.exit_code,
                                                 "signal": outcome.signal, "new_checkpoints": len(saves)})
        log.info("job %s: attempt %d ended (%s: %s) -> %s", job.id, attempt.n, outcome.cause, outcome.detail,
                 decision.message)
        if decision.action == "restart":
            when = now + decision.delay
            job = store.transition(job.id, JobState.BACKOFF, now=now, attempt=attempt.n, kind="restart",
                                   message=decision.message, next_start_at=when, restarts=job.restarts + 1,
                                   stop_intent=None, stop_deadline=None, detail=outcome.detail,
                                   data={"cause": outcome.cause, "delay": decision.delay})
            # Which checkpoint the relaunch will take (verified again at launch; this is the preview for people).
            preview = choose_resume(live_checkpoints(jl.manifest), str(self.job_config(job).supervision.resume_from),
                                    verify=lambda entry: None).entry
            self._alert("hang" if outcome.cause == "hang" else "restart", job, {
                "cause": outcome.cause, "detail": outcome.detail, "attempt": attempt.n + 1,
                "restarts": job.restarts, "delay": decision.delay, "gpus": attempt.gpus, "message": decision.message,
                "max_restarts": self.job_config(job).supervision.max_restarts,
                "resumed_from": preview.path if preview else None,
                "resumed_step": preview.step if preview else None,
                "resumed_score": preview.score if preview else None,
                "error": outcome.detail, "logs": str(al.stderr),
                "stacks": str(al.stacks) if outcome.cause == "hang" and al.stacks.exists() else None,
                "last_step": step,
            })
            if decision.delay > 0:
                self._schedule(job.id, "backoff", when)
            else:
                self.wake_job(job.id)
            return
        state = JobState(decision.state or "failed")
        self._finish(job, state, decision.end_reason or "finished", decision.message, now)

    def _finish(self, job: JobRow, state: JobState, end_reason: str, message: str, now: float) -> JobRow:
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
        job = store.transition(job.id, state, now=now, message=message, end_reason=end_reason,
                               best_checkpoint=result, detail=message, stop_intent=None, stop_deadline=None,
                               next_start_at=None,
                               data={"end_reason": end_reason, "best_checkpoint": result})
        for kind in ("budget", "backoff", "escalate", "started"):
            self._unschedule(job.id, kind)
        if self._checkpoints is not None:
            self._checkpoints.unwatch(job.id)
        event = {"completed": "budget" if end_reason == "budget" else "completed", "failed": "failed",
                 "stopped": "stopped"}[state.value]
        attempts = store.attempts(job.id)
        self._alert(event, job, {
            "end_reason": end_reason, "message": message, "best_checkpoint": result,
            "score": best.score if best else None, "step": best.step if best else None,
            "monitor": best.monitor if best else None, "attempts": len(attempts), "restarts": job.restarts,
            "elapsed_s": (now - job.first_started_at) if job.first_started_at else None, "budget_s": job.budget_s,
        })
        log.info("job %s: %s (%s)", job.id, state.value, end_reason)
        return job

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
        tracked = self._tracked.get(job.id)
        if tracked is None or tracked.attempt != attempt.n:
            return
        manifest = JobLayout(Path(job.job_dir)).manifest
        new, tracked.manifest_offset = read_json_lines_from(manifest, tracked.manifest_offset)
        for entry in new:
            if entry.get("event") == "save":
                score = entry.get("score")
                shown = f" {entry.get('monitor')}={score:.4g}" if score is not None else ""
                self._store().add_event(job.id, "checkpoint", f"checkpoint at step {entry.get('step')}{shown}",
                                        attempt=attempt.n, durable=False,
                                        data={"path": entry.get("path"), "step": entry.get("step"), "score": score,
                                              "kind": entry.get("kind")})

    # -- reconcile (daemon start) -------------------------------------------------------------
    def reconcile(self) -> None:
        """Make the store true again after a daemon restart or a reboot.

        A live trainer is adopted; one that ended meanwhile is collected from its
        monitor's exit file; one that vanished, or ran before a reboot, is
        relaunched from its best checkpoint.
        """
        store = self._store()
        now = self.clock()
        previous_boot = store.get_meta("boot_id")
        rebooted: list[str] = []
        for job in store.list_jobs(states=list(LIVE_STATES)):
            attempt = store.last_attempt(job.id)
            if attempt is None or not attempt.live:
                continue
            al = JobLayout(Path(job.job_dir)).attempt(attempt.n)
            monitor_exit = read_json(al.monitor_exit)
            started = read_json(al.monitor_start) or {}
            boot = started.get("boot_id") or attempt.boot_id
            if boot and boot != self.boot_id:
                # The node rebooted: that trainer is gone. (If a test faked the reboot, make sure of it.)
                kill_tree(attempt.monitor_pid if is_alive(attempt.monitor_pid, attempt.monitor_started) else None,
                          attempt.pgid if attempt.pgid and is_alive(attempt.pid, None) else None)
                store.add_event(job.id, "reboot", "the node rebooted while the job ran", now=now, attempt=attempt.n)
                self._on_attempt_end(job, attempt, monitor_exit, now, intent="reboot",
                                     intent_detail="the node rebooted")
                rebooted.append(job.id)
            elif monitor_exit is not None:
                store.add_event(job.id, "collected", f"attempt {attempt.n} ended while the daemon was away",
                                now=now, attempt=attempt.n)
                self._on_attempt_end(job, attempt, monitor_exit, now)
            elif is_alive(attempt.monitor_pid, attempt.monitor_started):
                jl = JobLayout(Path(job.job_dir))
                self._watch(job.id, attempt.n, jl, attempt.monitor_pid, attempt.monitor_started)
                store.add_event(job.id, "adopted", f"adopted attempt {attempt.n} (pid {attempt.pid})", now=now,
                                attempt=attempt.n)
                log.info("job %s: adopted running attempt %d", job.id, attempt.n)
            else:
                kill_tree(None, attempt.pgid)
                self._on_attempt_end(job, attempt, None, now)
        store.set_meta("boot_id", self.boot_id)
        if rebooted:
            log.warning("recovered %d job(s) after a reboot (boot id was %s)", len(rebooted), previous_boot)
            for job_id in rebooted:
                self._alert("reboot", store.get_job(job_id), {"jobs": rebooted, "previous_boot_id": previous_boot,
                                                              "boot_id": self.boot_id})

    # -- timers ------------------------------------------------------------------------------------
    def _schedule_timers(self, job: JobRow) -> None:
        deadline = self._deadline(job, job.first_started_at)
        if deadline is not None:
            self._schedule(job.id, "budget", deadline)
        if job.state is JobState.BACKOFF and job.next_start_at:
            self._schedule(job.id, "backoff", job.next_start_at)
        if job.state is JobState.STOPPING and job.stop_deadline:
            self._schedule(job.id, "escalate", job.stop_deadline)

    def _schedule(self, job_id: str, kind: str, when: float) -> None:
        if not self._scheduler.running:
            return
        # APScheduler runs on the wall clock; the job is polled (and re-checked) when it fires.
        self._scheduler.add_job(self.wake_job, "date", run_date=datetime.fromtimestamp(when + 0.01), args=[job_id],
                                id=f"{kind}:{job_id}", replace_existing=True)

    def _unschedule(self, job_id: str, kind: str) -> None:
        if not self._scheduler.running:
            return
        try:
            self._scheduler.remove_job(f"{kind}:{job_id}")
        except Exception:  # apscheduler's JobLookupError: nothing was scheduled
            pass

    # -- helpers -----------------------------------------------------------------------------------
    def _watch(self, job_id: str, n: int, jl: JobLayout, monitor_pid: int | None,
               monitor_started: float | None) -> None:
        """Follow a live attempt (launched or adopted): its exit, its new checkpoints, its hang clock."""
        # checkpoints saved before now are not news: events start from the manifest's current end
        self._tracked[job_id] = _Tracked(attempt=n, manifest_offset=_size(jl.manifest))
        if self._exits is not None and not self._exits.watch(job_id, monitor_pid, monitor_started):
            self.wake_job(job_id)  # already gone: collect it now
        if self._checkpoints is not None:
            self._checkpoints.watch(job_id, jl.checkpoints)

    def _monitor_alive(self, job_id: str, attempt: AttemptRow) -> bool:
        key = (job_id, attempt.n)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = ProcessHandle(attempt.monitor_pid, attempt.monitor_started)
        alive = handle.alive()
        if not alive:
            self._handles.pop(key, None)
        return alive

    def _deadline(self, job: JobRow, first_started_at: float | None) -> float | None:
        if job.budget_s is None or first_started_at is None:
            return None
        return first_started_at + job.budget_s

    def _budget_spent(self, job: JobRow, now: float) -> bool:
        deadline = self._deadline(job, job.first_started_at)
        return deadline is not None and now >= deadline

    def job_config(self, job: JobRow) -> DictConfig:
        """The frozen config of a job (cached: it never changes)."""
        cfg = self._configs.get(job.id)
        if cfg is None:
            cfg = load_job_config(JobLayout(Path(job.job_dir)).config)
            self._configs[job.id] = cfg
        return cfg

    def _alert(self, event: str, job: JobRow, details: dict[str, Any]) -> None:
        if self.alert_hook is None:
            return
        try:
            self.alert_hook(event, job, details)
        except Exception:  # alerts must never break supervision
            log.exception("job %s: alert %s failed", job.id, event)

    def _store(self) -> Store:
        if self.store is None:
            raise RuntimeError("Supervisor.open() was not called")
        return self.store


def _size(path: Path) -> int:
    """The size of a file, 0 when it does not exist (yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0
