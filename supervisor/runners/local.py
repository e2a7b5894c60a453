"""The local runner: each attempt is an attempt monitor on this node, pinned by pidfds.

The only code that starts or signals trainer processes. An attempt is a
``python -m supervisor.processes.attempt_monitor`` process (the conmon idea: it owns the
trainer, survives the daemon, and writes ``monitor-exit.json`` durably); the
exit of every monitor is one pidfd in the exit watcher's epoll set, so the loop
hears of a crash the instant it happens, with no polling.

Runner state (``attempts.runner_state``)::

    {"monitor_pid": int, "monitor_started": float, "trainer_pid": int | null, "pgid": int | null,
     "boot_id": str, "trainer_started": float (both once monitor.json is read),
     "world_size": int, "rank_pids": [int, ...] (index: rank; once monitor.json is read)}

Nothing is signalled on a pid alone: the monitor is proven by (pid, start time,
boot id) and the trainer by its own (pid, start time, boot id) from
``monitor.json``. A trainer that cannot be proven ours (its record predates
start times, or its pid now belongs to someone else) is never signalled; what
is left of its group is killed member by member, each carrying our
environment marker.

A multi-rank attempt (DDP, ``AttemptSpec.ranks``) is one monitor started with
``--nproc-per-node N``: it starts every rank as its own child, ends the attempt
when any rank dies, and forwards SIGTERM / SIGUSR1 / SIGUSR2 to every rank.
So the stop and the checkpoint request go to the (proven) monitor; the stacks
are asked of each rank directly (in parallel; a rank other than 0 only while it
is a child of the proven monitor), to know which ranks answered; the kill takes
rank 0's process group (every rank is in it) and the monitor's descendants, as
for one rank.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil

from supervisor.gpu.backend import GpuBackend
from supervisor.gpu.preflight import preflight
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start
from supervisor.processes.boot import current_boot_id
from supervisor.processes.control import (
    ProcessHandle,
    group_members,
    has_env_marker,
    is_same_process,
    kill_tree,
    process_uid,
    reap_monitors,
    signal_process,
    spawn_attempt_monitor,
    try_lock,
)
from supervisor.processes.stacks import dump_stacks
from supervisor.processes.watcher import ExitWatcher
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

log = logging.getLogger("ml_supervisor")



# After one rank died, the others get SIGTERM and SIGKILL this much later: they cannot save (a save
# is a collective), only write their exit records (~0.1 s), and the attempt must end within a second.
RANK_STOP_GRACE_S = 0.5


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
        if spec.ranks.nodes != 1:
            raise LaunchRefused(f"the local runner runs one node; {spec.ranks.nodes} were asked for", retry=False)
        world_size = spec.ranks.world_size
        monitor_args = ["--nproc-per-node", str(world_size), "--rank-stop-grace", str(RANK_STOP_GRACE_S)] \
            if world_size > 1 else []
        lock_fd = try_lock(spec.lock_path)
        if lock_fd is None:
            # A trainer of this job is still alive somewhere (its monitor holds the lock): never start a second.
            # This is also the backstop for a launch the daemon died in: the orphan's monitor holds the lock
            # until reconcile kills it (by identity), so the next attempt waits rather than run beside it,
            # even if that kill missed a process (a rank or worker inherits the lock fd too).
            raise LaunchRefused("another trainer of this job still holds its lock", retry=True)
        try:
            monitor_pid, monitor_started = spawn_attempt_monitor(AttemptLayout(spec.attempt_dir), spec.command,
                                                                 cwd=spec.workdir, env=spec.env, lock_fd=lock_fd,
                                                                 monitor_args=monitor_args, run_as=spec.run_as)
        finally:
            os.close(lock_fd)
        # "uid": whom the attempt runs as, recorded by us (the pids come from files that user can write).
        state: RunnerState = {"monitor_pid": monitor_pid, "monitor_started": monitor_started,
                              "trainer_pid": None, "pgid": None, "world_size": world_size,
                              "uid": spec.run_as.uid if spec.run_as else os.getuid()}
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
        """The monitor's files and its liveness; nothing known to have changed while its files do not answer
        (the core's own reads of that attempt dir then make the job wait, said why)."""
        reap_monitors()
        state = dict(ref.state)
        try:
            return self._observe(ref, state)
        except FileStalled:
            phase = Phase.RUNNING if ref.state.get("trainer_pid") else Phase.PENDING
            return Observation(phase, dict(ref.state), None, ref.state.get("trainer_pid"), ref.state.get("boot_id"))

    def _observe(self, ref: AttemptRef, state: RunnerState) -> Observation:
        layout = AttemptLayout(ref.attempt_dir)
        if not state.get("trainer_pid") or "boot_id" not in state:  # read monitor.json until it is known
            started = read_monitor_start(layout.monitor_start)
            if started is not None:
                pids = started.pids()
                state.update(trainer_pid=started.trainer_pid, pgid=started.pgid, boot_id=started.boot_id,
                             trainer_started=started.trainer_started, world_size=started.world_size,
                             rank_pids=[pids[r] for r in sorted(pids)])
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
        # Several ranks: to the monitor, which forwards it to every rank (and, told to stop,
        # gives ranks that end on it time to agree on the last save rather than killing them).
        if self._world_size(ref) > 1:
            signal_process(self._live_monitor(ref), signal.SIGTERM)
        else:
            signal_process(self._trainer_pid(ref), signal.SIGTERM)

    def request_checkpoint(self, ref: AttemptRef) -> bool:
        # SIGUSR1: the trainer saves a checkpoint at its next step and goes on (every rank: a save is a collective).
        if self._world_size(ref) > 1:
            return signal_process(self._live_monitor(ref), signal.SIGUSR1)
        return signal_process(self._trainer_pid(ref), signal.SIGUSR1)

    def dump_stacks(self, ref: AttemptRef, timeout_s: float) -> list[Path]:
        pids = self._rank_pids(ref)
        if not pids:
            return []
        # SIGUSR2 -> faulthandler (and py-spy when present), to each rank, never to the monitor: each
        # rank's file is waited for on its own, at the same time, so the loop waits for one timeout at most.
        if list(pids) == [0]:
            return dump_stacks(pids[0], ref.attempt_dir, timeout_s=timeout_s)
        with ThreadPoolExecutor(max_workers=len(pids)) as pool:
            dumps = pool.map(lambda rank: dump_stacks(pids[rank], ref.attempt_dir, timeout_s=timeout_s, rank=rank),
                             sorted(pids))
            return [path for files in dumps for path in files]

    def kill(self, ref: AttemptRef) -> list[int]:
        """SIGKILL the trainer's group and every descendant of the monitor (which lives on to report).

        Only what is proven ours: the monitor and the trainer by (pid, start time,
        boot id); without a proven trainer, only the group's members that carry
        our environment marker. An attempt with no state yet (its launch was
        interrupted) is found by identity: our marker and its own ``--attempt-dir``.
        """
        if not ref.state.get("monitor_pid"):
            return kill_tree(None, None, _processes_of_attempt(ref.attempt_dir, str(self._state_dir)))
        boot_id = ref.state.get("boot_id")
        monitor_pid = ref.state.get("monitor_pid")
        uid = ref.state.get("uid")
        monitor_ours = is_same_process(monitor_pid, ref.state.get("monitor_started"), boot_id, uid)
        pgid = ref.state.get("pgid")
        trainer_ours = bool(pgid) and pgid == ref.state.get("trainer_pid") and is_same_process(
            ref.state.get("trainer_pid"), ref.state.get("trainer_started"), boot_id, uid)
        extra: set[int] = set()
        if pgid and not trainer_ours and (boot_id is None or boot_id == current_boot_id()):
            # The leader is gone or unproven: its pid may be a stranger's group now. Members one by one.
            extra = {p for p in group_members(pgid) if has_env_marker(p, OWN_ENV_KEY, str(self._state_dir))
                     and (uid is None or process_uid(p) == uid)}
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

    def release(self, job_id: str) -> None:
        pass  # nothing held between attempts (a standby is the keeper's: drop_standby)

    def tick(self) -> None:
        reap_monitors()  # a monitor that exited after its job's last look is not left a zombie

    def close(self) -> None:
        for key in list(self._handles):
            self._close_handle(*key)
        if self._exits is not None:
            self._exits.stop()
            self._exits = None

    def _world_size(self, ref: AttemptRef) -> int:
        return int(ref.state.get("world_size") or 1)

    def _live_monitor(self, ref: AttemptRef) -> int | None:
        """The attempt's monitor when it is provably ours still (pid, start time, boot id), else ``None``."""
        pid: Any = ref.state.get("monitor_pid")
        ours = is_same_process(pid, ref.state.get("monitor_started"), ref.state.get("boot_id"), ref.state.get("uid"))
        return int(pid) if pid and ours else None

    def _rank_pids(self, ref: AttemptRef) -> dict[int, int]:
        """Rank -> pid of every rank provably ours: rank 0 by its identity, the others while they are
        children of the proven monitor (``monitor.json`` keeps no start time for them)."""
        ranks: dict[int, int] = {}
        rank0 = self._trainer_pid(ref)
        if rank0:
            ranks[0] = rank0
        pids: Any = ref.state.get("rank_pids")
        if not pids:
            started = read_monitor_start(AttemptLayout(ref.attempt_dir).monitor_start)
            pids = [started.pids()[r] for r in sorted(started.pids())] if started is not None else []
        monitor = self._live_monitor(ref) if len(pids) > 1 else None
        if monitor is not None:
            children = _children(monitor)
            ranks.update({rank: int(pid) for rank, pid in enumerate(pids) if rank and int(pid) in children})
        return ranks

    def _trainer_pid(self, ref: AttemptRef) -> int | None:
        """The trainer's pid when it is provably the trainer still (pid, start time, boot id), else ``None``."""
        pid: Any = ref.state.get("trainer_pid")
        started: Any = ref.state.get("trainer_started")
        boot_id: Any = ref.state.get("boot_id")
        if not pid or not started:  # still starting: the monitor may have reported the trainer by now
            record = read_monitor_start(AttemptLayout(ref.attempt_dir).monitor_start)
            if record is not None:
                pid, started, boot_id = record.trainer_pid, record.trainer_started, record.boot_id
        if not pid or not is_same_process(int(pid), started, boot_id, ref.state.get("uid")):
            return None
        return int(pid)


def _children(pid: int) -> set[int]:
    """The direct children of ``pid`` (empty when it is gone)."""
    try:
        return {child.pid for child in psutil.Process(pid).children()}
    except psutil.Error:
        return set()


def _processes_of_attempt(attempt_dir: Path, state_dir: str) -> set[int]:
    """Every process of this node started for ``attempt_dir`` by us: its monitor, ranks, their workers.

    Two proofs, both needed: the command line names the attempt dir (the monitor's and the trainer's
    ``--attempt-dir``, inherited by forked workers), and the environment carries our state-dir marker
    (another daemon's attempt, or a user's own process naming the dir, is not ours to kill).
    """
    wanted = str(attempt_dir)
    found: set[int] = set()
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info.get("cmdline") or []
        named = any(arg == "--attempt-dir" and value == wanted for arg, value in pairwise(argv))
        if named and has_env_marker(proc.pid, OWN_ENV_KEY, state_dir):
            found.add(proc.pid)
    return found


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
            if pid and state.get("uid") is not None and process_uid(int(pid)) != state["uid"]:
                continue  # a user's monitor.json named a process that is not theirs: never ours to kill
            if pid and started:
                known[int(pid)] = float(started)
    return known
