"""The local runner with a standby trainer per job: a restart that skips the imports and the builds.

While attempt ``n`` runs, ``prepare`` starts attempt ``n + 1`` as ``python -m
trainer --standby`` (one rank per process, forked from the job's zygote from the
second standby on); it imports, builds, writes its ready file and waits.
``promote`` checks it (alive, this attempt, not stale, the job's lock free) and
writes ``handover.json``; from then on it is an ordinary local attempt.
Standbys live only in this runner's memory: a new runner kills those an earlier
daemon left. docs/architecture.md ("Standby trainers") tells the whole story.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json, write_json_atomic
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import read_monitor_start
from supervisor.jobfiles.standbyfiles import HANDOVER_FILE, LOCK_FD_ENV, NICE_ENV, ready_file_name
from supervisor.processes.control import (
    ProcessHandle,
    kill_tree,
    spawn_attempt_monitor,
    start_time,
    try_lock,
)
from supervisor.processes.ports import (
    DEFAULT_MASTER_ADDR,
    choose_master_port,
    port_is_free,
)
from supervisor.runners.base import AttemptRef, AttemptSpec, LaunchRefused, Observation, Phase, RunnerState
from supervisor.runners.local import LocalRunner
from supervisor.runners.standby_process import (
    STANDBY_ENV,
    VIEW_FILE,
    Standby,
    StandbyState,
    busy_port_refusal,
    config_of,
    kill_leftover_standbys,
    kill_monitor,
    monitor_args,
    mtime,
    publish_view,
    ranks_broken,
    remove_file,
    restore_priority,
)
from supervisor.runners.zygote import Zygote, ZygoteState
from supervisor.runners.zygotes import JobZygotes

log = logging.getLogger("ml_supervisor")

# A standby's start-up (imports, builds: seconds of CPU) is background work: it must not take CPU from the
# training it backs up (on a small node it did: the running attempt slowed while its next standby imported).
# It runs at this niceness until promoted, when the runner gives every thread of it the monitor's back.
STANDBY_NICE = 10
# An attempt that waits for its zygote's imports (``promote``) starts cold after this long instead: a zygote stuck in
# an import (a filesystem that does not answer) must not hold a restart for ever.
ZYGOTE_WAIT_S = 120.0
MONITOR_START_WAIT_S = 1.0  # a forked monitor writes monitor.json within milliseconds: then the attempt runs


@dataclass
class Promotion:
    """An attempt promised to the standby its job's zygote will fork once its imports are done (``promote``)."""

    spec: AttemptSpec  # the attempt's
    standby: AttemptSpec  # the standby's, as ``prepare`` asked for it
    zygote: Zygote
    since: float  # monotonic


class StandbyLocalRunner(LocalRunner):
    """``LocalRunner`` plus one standby trainer per job (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._standbys: dict[str, Standby] = {}
        self._pending: dict[str, AttemptSpec] = {}  # job -> the standby its importing zygote will fork
        self._promoting: dict[str, Promotion] = {}  # job -> the attempt that waits for that standby
        self._zygotes = JobZygotes()
        self._failed_prepares: dict[tuple[str, int], int] = {}  # (job, attempt) -> standbys that died unready
        self._port_busy_since: dict[str, float] = {}  # job -> when a promotion first found its fixed port held
        kill_leftover_standbys(self._state_dir)

    # -- prepare -----------------------------------------------------------------------------------
    def has_standby(self, job_id: str) -> bool:
        """Whether the job has a standby, started or pending."""
        return job_id in self._standbys or job_id in self._pending

    def failed_prepares(self, job_id: str, attempt: int) -> int:
        """Standbys for ``attempt`` of the job that died before they were ready."""
        return self._failed_prepares.get((job_id, attempt), 0)

    def prepare(self, spec: AttemptSpec) -> RunnerState:
        """Start attempt ``spec.attempt``'s standby: forked from the job's zygote, else a monitor running
        ``spec.command`` + ``--standby`` (module docstring)."""
        self.drop_standby(spec.job_id)
        if spec.attempt_dir.exists():  # left by an earlier standby: a fresh attempt dir for the fresh one
            shutil.rmtree(spec.attempt_dir, ignore_errors=True)
        if spec.attempt > 1:  # attempt 1's is exec'd: nothing is imported to fork from yet
            zygote = self._zygote_for(spec)
            if zygote is not None and zygote.state == ZygoteState.READY:
                return self._fork_standby(zygote, spec)
            if zygote is not None:
                self._pending[spec.job_id] = spec
                publish_view(spec.lock_path.parent, StandbyState.PREPARING, spec.attempt, None, None,
                              spec.attempt_dir)
                return {"standby": True, "pending": True}
        return self._exec_standby(spec)

    def serve_pending(self, job_id: str) -> None:
        """Fork the job's pending standby if its zygote is ready now (exec it if the zygote failed)."""
        spec = self._pending.get(job_id)
        if spec is None:
            return
        zygote = self._zygote_for(spec)
        if zygote is not None and zygote.state == ZygoteState.IMPORTING:
            return
        del self._pending[job_id]
        if zygote is not None:
            self._fork_standby(zygote, spec)
        else:
            self._exec_standby(spec)

    def _exec_standby(self, spec: AttemptSpec, nice: bool = True) -> RunnerState:
        config = config_of(spec.command)
        world_size = spec.ranks.world_size
        # The job's lock, opened and NOT locked: the monitor and every rank inherit this one open file, and
        # the ranks lock it at the handover (module docstring). The running attempt holds the lock meanwhile.
        lock_fd = os.open(spec.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        env = self._standby_env(spec, nice)
        env[LOCK_FD_ENV] = str(lock_fd)
        try:
            pid, started = spawn_attempt_monitor(AttemptLayout(spec.attempt_dir), [*spec.command, "--standby"],
                                                 cwd=spec.workdir, env=env, lock_fd=lock_fd,
                                                 monitor_args=monitor_args(world_size))
        finally:
            os.close(lock_fd)
        return self._register(spec, config, pid, started, "started")

    def _fork_standby(self, zygote: Zygote, spec: AttemptSpec, nice: bool = True) -> RunnerState:
        """Ask the job's zygote for the standby; exec it instead (and from now on) if the zygote fails."""
        spec.attempt_dir.mkdir(parents=True, exist_ok=True)
        try:
            pid = zygote.fork({
                "attempt_dir": str(spec.attempt_dir), "cwd": spec.workdir, "env": self._standby_env(spec, nice),
                "lock_path": str(spec.lock_path), "monitor_args": monitor_args(spec.ranks.world_size),
                "command": [*spec.command, "--standby"],
            })
        except OSError as exc:
            self._zygotes.failed(spec.job_id, str(exc))
            return self._exec_standby(spec, nice)  # wanted now: a replaced zygote serves the next one
        return self._register(spec, config_of(spec.command), pid, start_time(pid) or 0.0, "forked")

    def _register(self, spec: AttemptSpec, config: Path, pid: int, started: float, how: str) -> RunnerState:
        world_size = spec.ranks.world_size
        standby = Standby(job_id=spec.job_id, attempt=spec.attempt, attempt_dir=spec.attempt_dir,
                          job_dir=spec.lock_path.parent, monitor_pid=pid, monitor_started=started,
                          config_path=config, config_mtime=mtime(config), handle=ProcessHandle(pid, started),
                          world_size=world_size)
        self._standbys[spec.job_id] = standby
        self._publish(standby)
        log.info("job %s: standby for attempt %d %s (monitor pid %d)", spec.job_id, spec.attempt, how, pid)
        return {"monitor_pid": pid, "monitor_started": started, "standby": True, "world_size": world_size}

    @staticmethod
    def _standby_env(spec: AttemptSpec, nice: bool = True) -> dict[str, str]:
        env = dict(spec.env)
        env[STANDBY_ENV] = spec.job_id
        # The standby's CUDA_VISIBLE_DEVICES is empty (its GPUs come with the handover), and CUDA reads it once,
        # when first asked: with this, torch.cuda.is_available() (called by many libraries as they import)
        # asks NVML instead of initialising CUDA (trainer/standby.py checks that nothing did, before it is ready).
        env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
        if nice and os.geteuid() == 0:  # only where we can undo it at the promotion: lowering a niceness needs root
            env[NICE_ENV] = str(STANDBY_NICE)
        return env

    # -- the zygotes -------------------------------------------------------------------------------
    def _zygote_for(self, spec: AttemptSpec) -> Zygote | None:
        """The job's zygote, started if it has none; None when the job's standbys are exec'd."""
        return self._zygotes.get(spec.job_id, list(spec.command), cwd=spec.workdir, env=self._standby_env(spec),
                                 job_dir=spec.lock_path.parent)

    # -- promote -----------------------------------------------------------------------------------
    def promote(self, job_id: str, spec: AttemptSpec) -> RunnerState | None:
        """Hand the job's standby attempt ``spec``; its state, or None when there is no usable standby.

        Raises ``LaunchRefused(retry=True)`` while a trainer of the job still holds its lock.
        """
        self.serve_pending(job_id)
        if job_id in self._pending:  # its zygote still imports, with a head start on a cold start's imports
            return self._promise(job_id, self._pending[job_id], spec)
        standby = self._standbys.get(job_id)
        if standby is None:
            return None
        why = self._unusable(standby, spec)
        if why:
            log.info("job %s: not promoting the standby: %s", job_id, why)
            self.drop_standby(job_id)
            return None
        return self._hand_over(standby, spec)

    def _hand_over(self, standby: Standby, spec: AttemptSpec) -> RunnerState:
        """Write the standby's ``handover.json`` for ``spec``: from now on it is that attempt; its state."""
        job_id = standby.job_id
        master_port = self._master_port(spec) if standby.world_size > 1 else None
        lock_fd = try_lock(spec.lock_path)
        if lock_fd is None:
            raise LaunchRefused("another trainer of this job still holds its lock", retry=True)
        try:
            standby.state = StandbyState.PROMOTING
            restore_priority(standby)
            write_json_atomic(standby.attempt_dir / HANDOVER_FILE, {
                "argv": list(spec.command[3:]),  # after "python -m trainer"
                "env": dict(spec.env), "lock_path": str(spec.lock_path), "master_port": master_port,
                "written_at": time.time(),
            }, durable=False)
        finally:
            os.close(lock_fd)  # the standby takes it now (it waits for it a little while, should we be slow)
        del self._standbys[job_id]
        standby.handle.close()
        remove_file(standby.job_dir / VIEW_FILE)
        self._watch(job_id, standby.monitor_pid, standby.monitor_started)
        log.info("job %s: standby promoted to attempt %d", job_id, spec.attempt)
        return {"monitor_pid": standby.monitor_pid, "monitor_started": standby.monitor_started,
                "trainer_pid": None, "pgid": None, "standby": True, "world_size": standby.world_size,
                "uid": os.getuid()}

    # -- an attempt that waits for its zygote -------------------------------------------------------
    def _promise(self, job_id: str, standby: AttemptSpec, spec: AttemptSpec) -> RunnerState | None:
        """Promise attempt ``spec`` the standby the job's importing zygote will fork; its state (no monitor yet).

        The zygote has imported since the last attempt's first step: what is left of its imports is
        shorter than a cold start's whole (bench/cold_restart.py). None (a cold start) when the pending
        standby is not this attempt's; ``LaunchRefused`` while a trainer of the job holds its lock.
        """
        zygote = self._zygote_for(standby)
        usable = zygote is not None and zygote.state == ZygoteState.IMPORTING \
            and standby.attempt_dir == spec.attempt_dir and standby.ranks.world_size == spec.ranks.world_size
        if usable:
            lock_fd = try_lock(spec.lock_path)
            if lock_fd is None:  # the pending standby stays, for the launch's next try
                raise LaunchRefused("another trainer of this job still holds its lock", retry=True)
            os.close(lock_fd)
        self.drop_standby(job_id)
        if not usable or zygote is None:
            return None
        zygote.hurry()
        self._promoting[job_id] = Promotion(spec, standby, zygote, time.monotonic())
        if self._exits is not None:  # its "ready" wakes the loop, which serves the attempt (observe)
            self._exits.watch_readable(job_id, zygote.reply_fd)
        log.info("job %s: attempt %d waits for its zygote's imports (pid %d)", job_id, spec.attempt, zygote.proc.pid)
        return {"monitor_pid": None, "monitor_started": None, "trainer_pid": None, "pgid": None, "standby": True,
                "from_zygote": True, "world_size": spec.ranks.world_size, "uid": os.getuid()}

    def observe(self, ref: AttemptRef) -> Observation:
        """As ``LocalRunner.observe``; an attempt promised to a zygote's standby is pending until it is forked."""
        if not ref.state.get("from_zygote") or ref.state.get("monitor_pid"):
            return super().observe(ref)
        state = self._serve_promise(ref)
        if state is None:  # called off (a stop), or promised by an earlier daemon: nothing of it was started
            return Observation(Phase.ENDED, dict(ref.state), None, None, None)
        if not state.get("monitor_pid"):
            return Observation(Phase.PENDING, state, None, None, None)
        return super().observe(replace(ref, state=state))

    def _serve_promise(self, ref: AttemptRef) -> RunnerState | None:
        """Fork and hand over the promised standby once the zygote is ready (a cold start if it failed)."""
        promise = self._promoting.get(ref.job_id)
        if promise is None or promise.spec.attempt != ref.attempt:
            return None
        self._zygotes.tick()
        zygote = promise.zygote
        if zygote.state == ZygoteState.IMPORTING and time.monotonic() - promise.since < ZYGOTE_WAIT_S:
            return dict(ref.state)
        del self._promoting[ref.job_id]
        if zygote.state != ZygoteState.READY:
            self._zygotes.failed(ref.job_id, zygote.failure or f"not ready after {ZYGOTE_WAIT_S:.0f}s")
            log.warning("job %s: its zygote did not become ready; attempt %d starts cold", ref.job_id, ref.attempt)
            try:
                return self.launch(promise.spec)
            except (LaunchRefused, OSError) as exc:
                log.warning("job %s: cannot start attempt %d: %s", ref.job_id, ref.attempt, exc)
                return None
        # Not niced: it is the attempt, not a background standby (its priority is not restored at the handover).
        self._fork_standby(zygote, promise.standby, nice=False)
        try:
            state = self._hand_over(self._standbys[ref.job_id], promise.spec)
        except LaunchRefused as exc:
            log.warning("job %s: cannot hand attempt %d its standby: %s", ref.job_id, ref.attempt, exc)
            self.drop_standby(ref.job_id)
            return None
        monitor_json = AttemptLayout(promise.spec.attempt_dir).monitor_start
        deadline = time.monotonic() + MONITOR_START_WAIT_S  # so this very look finds the trainer running
        while not monitor_json.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        return state

    def _called_off(self, ref: AttemptRef) -> bool:
        """Whether ``ref`` was still waiting for its zygote (now it is not: nothing of it will start)."""
        return not ref.state.get("monitor_pid") and self._promoting.pop(ref.job_id, None) is not None

    def graceful_stop(self, ref: AttemptRef) -> None:
        if not self._called_off(ref):
            super().graceful_stop(ref)

    def kill(self, ref: AttemptRef) -> list[int]:
        self._called_off(ref)
        return super().kill(ref)

    def _master_port(self, spec: AttemptSpec) -> int:
        """The promoted attempt's ``MASTER_PORT``, as its monitor would choose it on a cold start: the job's
        own ``env.MASTER_PORT`` when it sets one (``busy_port_refusal`` while something holds it), else a
        port free now."""
        port, fixed = choose_master_port(None, spec.env)
        if not fixed or port_is_free(DEFAULT_MASTER_ADDR, port):
            self._port_busy_since.pop(spec.job_id, None)
            return port
        now = time.monotonic()
        refusal = busy_port_refusal(port, now - self._port_busy_since.setdefault(spec.job_id, now))
        if not refusal.retry:
            del self._port_busy_since[spec.job_id]  # the launch after the back-off waits as long again
        raise refusal

    def _unusable(self, standby: Standby, spec: AttemptSpec) -> str | None:
        if standby.attempt != spec.attempt or standby.attempt_dir != spec.attempt_dir:
            return f"it was prepared for attempt {standby.attempt}, attempt {spec.attempt} is starting"
        if not standby.handle.alive():
            return "it died"
        if spec.ranks.world_size != standby.world_size:
            return f"it has {standby.world_size} rank(s), the attempt runs {spec.ranks.world_size}"
        try:
            broken = ranks_broken(standby)
            if broken:  # a rank died: its monitor is stopping the others and will exit (the tick replaces it)
                return broken
            self._refresh(standby)
        except FileStalled:
            return "its files do not answer"
        if standby.state == StandbyState.STALE:
            return "stale (the config or the user's code changed since it imported them)"
        return None

    # -- upkeep ------------------------------------------------------------------------------------
    def tick(self) -> None:
        """Drop standbys that died or went stale (the core prepares a fresh one at its next poll)."""
        super().tick()
        self._zygotes.tick()
        for job_id in list(self._pending):
            self.serve_pending(job_id)
        for job_id, standby in list(self._standbys.items()):
            if not standby.handle.alive():
                if standby.state == StandbyState.PREPARING:
                    key = (job_id, standby.attempt)
                    self._failed_prepares[key] = self._failed_prepares.get(key, 0) + 1
                log.warning("job %s: the standby for attempt %d died; replacing it", job_id, standby.attempt)
                self.drop_standby(job_id)
                continue
            before = standby.state
            try:
                self._refresh(standby)
            except FileStalled:
                continue  # its files (or the user's code) do not answer: looked at again at the next tick
            if standby.state == StandbyState.STALE:
                log.info("job %s: the standby is stale (code or config changed); replacing it", job_id)
                self._publish(standby)
                self.drop_standby(job_id)
            elif standby.state != before:
                self._publish(standby)

    def _refresh(self, standby: Standby) -> None:
        """Read the standby's ready file; mark it stale when its config or imported code changed."""
        if standby.state == StandbyState.PREPARING:
            files = [read_json(standby.attempt_dir / ready_file_name(rank, standby.world_size))
                     for rank in range(standby.world_size)]
            readies = [ready for ready in files if isinstance(ready, dict) and "failed" not in ready]
            if len(readies) == standby.world_size:  # every rank is ready
                standby.modules = {str(k): float(v) for ready in readies
                                   for k, v in (ready.get("modules") or {}).items()}
                standby.trainer_pid = int(readies[0].get("pid") or 0) or None  # rank 0's
                standby.state = StandbyState.READY
        if standby.state in (StandbyState.PREPARING, StandbyState.READY) and self._changed(standby):
            standby.state = StandbyState.STALE

    @staticmethod
    def _changed(standby: Standby) -> bool:
        if mtime(standby.config_path) != standby.config_mtime:
            return True
        return any(mtime(Path(path)) != seen for path, seen in standby.modules.items())

    def drop_standby(self, job_id: str) -> None:
        """Kill the job's standby (monitor and trainer) and remove its attempt dir."""
        pending = self._pending.pop(job_id, None)
        if pending is not None:
            remove_file(pending.lock_path.parent / VIEW_FILE)
        standby = self._standbys.pop(job_id, None)
        if standby is None:
            return
        # First: the job may have just ended, and `status` must not show a standby being killed (up to 2 s).
        remove_file(standby.job_dir / VIEW_FILE)
        started = read_monitor_start(AttemptLayout(standby.attempt_dir).monitor_start)
        pgid = started.pgid if started is not None else None
        kill_tree(standby.monitor_pid, pgid)
        kill_monitor(standby)
        shutil.rmtree(standby.attempt_dir, ignore_errors=True)

    def forget_job(self, job_id: str) -> None:
        """The job ended for good: no standby for it, nor a zygote."""
        self.drop_standby(job_id)
        self._promoting.pop(job_id, None)
        self._zygotes.forget(job_id)
        self._port_busy_since.pop(job_id, None)
        for key in [k for k in self._failed_prepares if k[0] == job_id]:
            del self._failed_prepares[key]

    def close(self) -> None:
        for job_id in [*self._standbys, *self._pending]:
            self.drop_standby(job_id)
        self._promoting.clear()
        self._zygotes.close()
        super().close()

    def _publish(self, standby: Standby) -> None:
        publish_view(standby.job_dir, standby.state, standby.attempt, standby.monitor_pid, standby.trainer_pid,
                      standby.attempt_dir)


