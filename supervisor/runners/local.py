"""The local runner: each attempt is an attempt monitor on this node, pinned by pidfds.

The only code that starts or signals trainer processes. An attempt is a
``python -m supervisor.attempt_monitor`` process (the conmon idea: it owns the
trainer, survives the daemon, and writes ``monitor-exit.json`` durably); the
exit of every monitor is one pidfd in the exit watcher's epoll set, so the loop
hears of a crash the instant it happens, with no polling.

Runner state (``attempts.runner_state``)::

    {"monitor_pid": int, "monitor_started": float, "trainer_pid": int | null, "pgid": int | null,
     "boot_id": str, "trainer_started": float (both once monitor.json is read)}

Nothing is signalled on a pid alone: the monitor is proven by (pid, start time,
boot id) and the trainer by its own (pid, start time, boot id) from
``monitor.json``. A trainer that cannot be proven ours (its record predates
start times, or its pid now belongs to someone else) is never signalled; what
is left of its group is killed member by member, each carrying our
environment marker.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from supervisor.attempt_monitor import current_boot_id
from supervisor.gpu.backend import GpuBackend
from supervisor.gpu.preflight import preflight
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start
from supervisor.process import (
    ProcessHandle,
    group_members,
    has_env_marker,
    is_same_process,
    kill_tree,
    reap_monitors,
    signal_process,
    spawn_attempt_monitor,
    try_lock,
)
from supervisor.runners.base import (
    OWN_ENV_KEY,
    AttemptRef,
    AttemptSpec,
    LaunchRefused,
    Notify,
    Observation,
    OrphanCheck,
    Phase,
    RunnerNotice,
    RunnerState,
)
from supervisor.stacks import dump_stacks
from supervisor.watcher import ExitWatcher

log = logging.getLogger("ml_supervisor")



class LocalRunner:
    """Attempts as attempt-monitor processes on this node (see the module docstring)."""

    kind = "local"

    def __init__(self, state_dir: Path, notify: Notify, *, watch_exits: bool = True,
                 gpu_backend: Callable[[], GpuBackend | None] = lambda: None, preflight_wait_s: float = 30.0) -> None:
        self._state_dir = state_dir
        self._notify = notify
        self._gpu_backend = gpu_backend
        self._preflight_wait_s = preflight_wait_s
        self._handles: dict[tuple[str, int], ProcessHandle] = {}  # monitors, pinned by pidfd
        self._exits: ExitWatcher | None = None
        if watch_exits:
            self._exits = ExitWatcher(lambda job_id: notify(RunnerNotice(job_id, "ended")))
            self._exits.start()

    # -- launch and adoption ------------------------------------------------------------------------
    def launch(self, spec: AttemptSpec) -> RunnerState:
        """Start the attempt's monitor (which starts the trainer); its state."""
        if spec.ranks.world_size != 1:
            raise LaunchRefused(f"the local runner runs one rank; {spec.ranks.world_size} were asked for", retry=False)
        lock_fd = try_lock(spec.lock_path)
        if lock_fd is None:
            # A trainer of this job is still alive somewhere (its monitor holds the lock): never start a second.
            raise LaunchRefused("another trainer of this job still holds its lock", retry=True)
        try:
            monitor_pid, monitor_started = spawn_attempt_monitor(AttemptLayout(spec.attempt_dir), spec.command,
                                                                 cwd=spec.workdir, env=spec.env, lock_fd=lock_fd)
        finally:
            os.close(lock_fd)
        state: RunnerState = {"monitor_pid": monitor_pid, "monitor_started": monitor_started,
                              "trainer_pid": None, "pgid": None}
        self._watch(spec.job_id, monitor_pid, monitor_started)
        return state

    def adopt(self, ref: AttemptRef) -> Observation:
        """Watch an attempt an earlier daemon started (its monitor is not our child: pidfds work anyway)."""
        seen = self.observe(ref)
        if seen.phase is not Phase.ENDED:
            self._watch(ref.job_id, ref.state.get("monitor_pid"), ref.state.get("monitor_started"))
        return seen

    def _watch(self, job_id: str, pid: int | None, started: float | None) -> None:
        if self._exits is not None and not self._exits.watch(job_id, pid, started):
            self._notify(RunnerNotice(job_id, "ended"))  # already gone: collect it now

    # -- observing ---------------------------------------------------------------------------------
    def observe(self, ref: AttemptRef) -> Observation:
        """The monitor's files and its liveness."""
        reap_monitors()
        layout = AttemptLayout(ref.attempt_dir)
        state = dict(ref.state)
        if not state.get("trainer_pid") or "boot_id" not in state:  # read monitor.json until it is known
            started = read_monitor_start(layout.monitor_start)
            if started is not None:
                state.update(trainer_pid=started.trainer_pid, pgid=started.pgid, boot_id=started.boot_id,
                             trainer_started=started.trainer_started)
        boot_id = state.get("boot_id")
        ended = read_monitor_exit(layout.monitor_exit)
        if ended is None and not self._monitor_alive(ref):
            # The monitor writes its exit file before it exits: read again to close the race.
            ended = read_monitor_exit(layout.monitor_exit)
            if ended is None:  # vanished (the loop kills what may be left: observing never signals)
                return Observation(Phase.ENDED, state, None, state.get("trainer_pid"), boot_id)
        if ended is not None:
            self._close_handle(ref.job_id, ref.attempt)
            return Observation(Phase.ENDED, state, ended, state.get("trainer_pid"), boot_id)
        phase = Phase.RUNNING if state.get("trainer_pid") else Phase.PENDING
        return Observation(phase, state, None, state.get("trainer_pid"), boot_id)

    def _monitor_alive(self, ref: AttemptRef) -> bool:
        key = (ref.job_id, ref.attempt)
        handle = self._handles.get(key)
        if handle is None:
            handle = self._handles[key] = ProcessHandle(ref.state.get("monitor_pid"), ref.state.get("monitor_started"))
        alive = handle.alive()
        if not alive:
            self._close_handle(*key)
        return alive

    def _close_handle(self, job_id: str, attempt: int) -> None:
        handle = self._handles.pop((job_id, attempt), None)
        if handle is not None:
            handle.close()

    # -- operations --------------------------------------------------------------------------------
    def graceful_stop(self, ref: AttemptRef) -> None:
        # SIGTERM to the trainer alone: DataLoader workers die at once on SIGTERM, and the
        # trainer, killed by their loss mid-step, could save nothing. The group gets SIGKILL
        # at escalation (and the monitor clears what is left when the trainer exits).
        signal_process(self._trainer_pid(ref), signal.SIGTERM)

    def request_checkpoint(self, ref: AttemptRef) -> bool:
        # SIGUSR1: the trainer saves a checkpoint at its next step and goes on.
        return signal_process(self._trainer_pid(ref), signal.SIGUSR1)

    def dump_stacks(self, ref: AttemptRef, timeout_s: float) -> list[Path]:
        pid = self._trainer_pid(ref)
        if not pid:
            return []
        # SIGUSR2 -> faulthandler (and py-spy when present), to the trainer, never to its monitor.
        return dump_stacks(pid, ref.attempt_dir, timeout_s=timeout_s)

    def kill(self, ref: AttemptRef) -> list[int]:
        """SIGKILL the trainer's group and every descendant of the monitor (which lives on to report).

        Only what is proven ours: the monitor and the trainer by (pid, start time,
        boot id); without a proven trainer, only the group's members that carry
        our environment marker.
        """
        boot_id = ref.state.get("boot_id")
        monitor_pid = ref.state.get("monitor_pid")
        monitor_ours = is_same_process(monitor_pid, ref.state.get("monitor_started"), boot_id)
        pgid = ref.state.get("pgid")
        trainer_ours = bool(pgid) and pgid == ref.state.get("trainer_pid") and is_same_process(
            ref.state.get("trainer_pid"), ref.state.get("trainer_started"), boot_id)
        extra: set[int] = set()
        if pgid and not trainer_ours and (boot_id is None or boot_id == current_boot_id()):
            # The leader is gone or unproven: its pid may be a stranger's group now. Members one by one.
            extra = {p for p in group_members(pgid) if has_env_marker(p, OWN_ENV_KEY, str(self._state_dir))}
        return kill_tree(monitor_pid if monitor_ours else None, pgid if trainer_ours else None, extra)

    def clean_orphans(self, gpus: Sequence[int], earlier: Sequence[AttemptRef]) -> OrphanCheck:
        backend = self._gpu_backend()
        if backend is None or not gpus:
            return OrphanCheck(ok=True)
        check = preflight(gpus, backend, _known_processes(earlier), kill_own=True, wait_s=self._preflight_wait_s,
                          own_env_key=OWN_ENV_KEY, own_env_value=str(self._state_dir))
        return OrphanCheck(ok=check.ok, reason=check.reason, killed=tuple(check.killed))

    def forget(self, job_id: str) -> None:
        for key in [k for k in self._handles if k[0] == job_id]:
            self._close_handle(*key)
        if self._exits is not None:
            self._exits.unwatch(job_id)

    def tick(self) -> None:
        reap_monitors()  # a monitor that exited after its job's last look is not left a zombie

    def close(self) -> None:
        for key in list(self._handles):
            self._close_handle(*key)
        if self._exits is not None:
            self._exits.stop()
            self._exits = None

    def _trainer_pid(self, ref: AttemptRef) -> int | None:
        """The trainer's pid when it is provably the trainer still (pid, start time, boot id), else ``None``."""
        pid: Any = ref.state.get("trainer_pid")
        started: Any = ref.state.get("trainer_started")
        boot_id: Any = ref.state.get("boot_id")
        if not pid or not started:  # still starting: the monitor may have reported the trainer by now
            record = read_monitor_start(AttemptLayout(ref.attempt_dir).monitor_start)
            if record is not None:
                pid, started, boot_id = record.trainer_pid, record.trainer_started, record.boot_id
        if not pid or not is_same_process(int(pid), started, boot_id):
            return None
        return int(pid)


def _known_processes(earlier: Sequence[AttemptRef]) -> dict[int, float]:
    """pid -> start time of the monitors and trainers of ``earlier`` attempts of this boot (their identities)."""
    boot = current_boot_id()
    known: dict[int, float] = {}
    for ref in earlier:
        state = ref.state
        if state.get("boot_id") not in (None, boot):
            continue  # an earlier boot's processes are gone; their pids are strangers' now
        for pid_key, started_key in (("monitor_pid", "monitor_started"), ("trainer_pid", "trainer_started")):
            pid, started = state.get(pid_key), state.get(started_key)
            if pid and started:
                known[int(pid)] = float(started)
    return known
