"""The per-attempt monitor: a tiny process that owns an attempt's trainer processes and records how they ended.

The conmon / containerd-shim idea. The daemon starts it in a session of its
own; it starts the trainer in a new process group, becomes the child
subreaper (so orphaned DataLoader workers are re-parented to it, not to
init), waits, kills whatever is left of the tree, and writes the exit status
durably. The daemon can be killed, restarted or upgraded meanwhile: the
trainer keeps running and its exit status is never lost.

A multi-rank attempt (DDP on one node, ``--nproc-per-node N``) is started the
way torchrun's agent does it: one trainer process per local rank, each a direct
child of the monitor, all in rank 0's process group, each with the environment
Lightning reads for externally launched processes (``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``NODE_RANK``), so
Lightning neither spawns nor watches ranks itself. When a rank dies (a signal,
or an exit code other than 0, 130, 143) the others get SIGTERM at once and
SIGKILL ``--rank-stop-grace`` later: a rank left alone would block in its next
collective for half an hour. A rank that ends gracefully gives the others
``--rank-exit-grace`` to finish on their own. SIGTERM, SIGUSR1 and SIGUSR2 sent
to the monitor are forwarded to every live rank (stop, save, stacks).

It holds the job's lock (an flock the daemon passes as an inherited fd) for
its whole life, and so does every rank (they inherit the same fd): the lock is
free only when none of them lives, so two live trainers of one job cannot exist
even when the monitor itself is killed. A standby's monitor (``--standby``) gets
that file open but not locked: at the handover its ranks lock the open file they
share (``trainer/standby.py``), and from then on it is held as a cold attempt's
is. A monitor that cannot record its trainer (``monitor.json`` unwritable: disk
full) kills every rank before it exits: nobody could find and stop an
unrecorded trainer.

    python -m supervisor.processes.attempt_monitor --attempt-dir DIR --cwd DIR [--lock-fd N]
        [--nproc-per-node N [--master-port P] [--master-addr A] [--rank-stop-grace S] [--rank-exit-grace S]]
        [--standby] -- CMD...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import psutil

from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import (
    MonitorExit,
    MonitorStart,
    RankEnding,
    RankProcess,
    write_monitor_exit,
    write_monitor_start,
)

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 5.0
DEFAULT_MASTER_ADDR = "127.0.0.1"
# SIGTERM -> SIGKILL for the surviving ranks after a rank died: they cannot save (a save is a
# collective), they only need to write their exit records. Short, so the attempt ends within a second.
DEFAULT_RANK_STOP_GRACE_S = 0.8
# After a rank ended gracefully (completed, or stopped by SIGTERM): time for the others to finish
# their own way (the last save, W&B's finish) before they are stopped.
DEFAULT_RANK_EXIT_GRACE_S = 60.0
# A fixed MASTER_PORT still held by the previous attempt's ranks (or TIME_WAIT): wait this long for it.
DEFAULT_PORT_WAIT_S = 60.0
# Exit codes that mean "ended its own way": completed, or stopped by SIGINT/SIGTERM (128 + N).
GRACEFUL_EXIT_CODES = frozenset({0, 128 + signal.SIGINT, 128 + signal.SIGTERM})
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def current_boot_id() -> str:
    """This boot's id; ``ML_SUPERVISOR_BOOT_ID`` overrides it (tests simulate a reboot with it)."""
    override = os.environ.get("ML_SUPERVISOR_BOOT_ID")
    if override:
        return override
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _ignore(signum: int, frame: object) -> None:
    """Stay alive on terminal and stop signals; a Python handler (not SIG_IGN) so the trainer gets defaults."""


def _kill_leftovers(pgid: int) -> list[int]:
    """Kill what is left of the trainer's tree (its process group, then any child of ours) and reap it."""
    killed: list[int] = []
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        pass
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break  # no children left
        if pid == 0:
            # children remain: orphans re-parented to us that left the process group (setsid)
            for child in _children_of(os.getpid()):
                try:
                    os.kill(child, signal.SIGKILL)
                    killed.append(child)
                except ProcessLookupError:
                    pass
            time.sleep(0.02)
        else:
            if pid not in killed:
                killed.append(pid)
    return killed


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


# --- ranks ------------------------------------------------------------------------------------------


def rank_environment(*, rank: int, local_rank: int, world_size: int, local_world_size: int, node_rank: int,
                     master_addr: str, master_port: int) -> dict[str, str]:
    """What Lightning's ``LightningEnvironment`` reads to join a process group it did not launch."""
    return {
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(master_port),
        "WORLD_SIZE": str(world_size),
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(local_world_size),
        "NODE_RANK": str(node_rank),
        "GROUP_RANK": str(node_rank),
    }


def free_port(addr: str = DEFAULT_MASTER_ADDR) -> int:
    """A TCP port nobody listens on now (the kernel picks it; torchrun does the same)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def port_is_free(addr: str, port: int) -> bool:
    """Whether rank 0's store could listen on ``port`` now (SO_REUSEADDR, as c10d's TCPStore binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
        return True


def wait_port_free(addr: str, port: int, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Wait until ``port`` can be bound (the previous attempt's ranks may still hold it); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(addr, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def choose_master_port(explicit: int | None, environ: Mapping[str, str]) -> tuple[int, bool]:
    """The port for this attempt and whether it is fixed (``--master-port``, else the job's ``MASTER_PORT``).

    A fixed port is honoured (the job may need it, e.g. for a firewall); otherwise a fresh free
    port per attempt, so a restart never races the previous attempt's sockets.
    """
    if explicit:
        return explicit, True
    configured = environ.get("MASTER_PORT", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured), True
    return free_port(), False


class RankProcessLike(Protocol):
    """What the monitor keeps of a started rank: a ``Popen``, or a forked one's record (``trainer.zygote``)."""

    pid: int
    returncode: int | None


# Starts one rank: (command, cwd, env or None to inherit ours, stdout fd, stderr fd, process group to join
# (0: a new one, led by this rank), the job lock's fd or None) -> the process. None: Popen (an exec).
RankLauncher = Callable[[list[str], str, "dict[str, str] | None", int, int, int, "int | None"], RankProcessLike]


@dataclass
class RankGroup:
    """The attempt's trainer processes, one per local rank, and how each ended."""

    procs: dict[int, RankProcessLike] = field(default_factory=dict)  # global rank -> process
    local_ranks: dict[int, int] = field(default_factory=dict)
    endings: dict[int, RankEnding] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # ranks in the order they ended
    stopped_by: dict[int, str] = field(default_factory=dict)
    stop_requested: bool = False  # the monitor was sent SIGTERM (the daemon is stopping the attempt)

    @property
    def pgid(self) -> int:
        return self.procs[min(self.procs)].pid

    def live(self) -> list[int]:
        return [r for r in self.procs if r not in self.endings]

    def signal_live(self, signum: int, *, by_monitor: bool) -> None:
        for rank in self.live():
            try:
                os.kill(self.procs[rank].pid, signum)
            except ProcessLookupError:
                continue
            if by_monitor:
                self.stopped_by[rank] = signal.Signals(signum).name

    def forward(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: pass SIGTERM / SIGUSR1 / SIGUSR2 on to every live rank."""
        if signum == signal.SIGTERM:
            self.stop_requested = True
        self.signal_live(signum, by_monitor=False)

    def reap(self) -> list[int]:
        """Reap every exited child (we are the subreaper); the ranks among them, in order."""
        ended: list[int] = []
        by_pid = {p.pid: r for r, p in self.procs.items()}
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rank = by_pid.get(pid)
            if rank is None or rank in self.endings:
                continue  # an orphan re-parented to us
            code = os.waitstatus_to_exitcode(status)
            self.procs[rank].returncode = code  # reaped here: Popen must not wait for it again
            self.endings[rank] = RankEnding(
                rank=rank, pid=pid, exit_code=code if code >= 0 else None,
                signal=signal.Signals(-code).name if code < 0 else None, ended_at=time.time(),
                stopped_by=self.stopped_by.get(rank))
            self.order.append(rank)
            ended.append(rank)
        return ended


def died(ending: RankEnding) -> bool:
    """A rank that was killed or failed, rather than one that completed or stopped on a signal gracefully."""
    return ending.signal is not None or ending.exit_code not in GRACEFUL_EXIT_CODES


def supervise_ranks(group: RankGroup, wakeup_fd: int, *, stop_grace_s: float, exit_grace_s: float) -> None:
    """Wait until every rank has ended; after the first end, stop the rest (see the module docstring).

    Wakes on SIGCHLD through ``wakeup_fd`` (``signal.set_wakeup_fd``), so a rank's
    death is seen within milliseconds, and on the grace timers.
    """
    term_at: float | None = None
    kill_at: float | None = None
    termed = False
    while group.live():
        now = time.monotonic()
        deadlines = [t for t in (None if termed else term_at, kill_at) if t is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        ready, _, _ = select.select([wakeup_fd], [], [], timeout)
        if ready:
            _drain(wakeup_fd)
        now = time.monotonic()
        for rank in group.reap():
            if not group.live():
                break
            abrupt = died(group.endings[rank]) and not group.stop_requested
            due = now if abrupt else now + exit_grace_s
            term_at = due if term_at is None else min(term_at, due)
        if not group.live():
            break
        if not termed and term_at is not None and now >= term_at:
            group.signal_live(signal.SIGTERM, by_monitor=True)
            termed, kill_at = True, now + stop_grace_s
        elif kill_at is not None and now >= kill_at:
            group.signal_live(signal.SIGKILL, by_monitor=True)
            kill_at = None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _on_sigchld(signum: int, frame: FrameType | None) -> None:
    """A Python-level handler, so SIGCHLD reaches the wakeup fd; the loop does the reaping."""


def start_ranks(command: list[str], cwd: str, layout: AttemptLayout, *, nproc: int, node_rank: int, nnodes: int,
                master_addr: str, master_port: int | None, group: RankGroup, lock_fd: int | None = None,
                launch: RankLauncher | None = None) -> None:
    """Start one trainer per local rank (rank 0 first: it leads the process group every rank joins).

    ``launch``: how (default: ``subprocess.Popen``, an exec; ``trainer.zygote`` forks them instead).
    """
    world_size = nproc * nnodes
    for local_rank in range(nproc):
        rank = node_rank * nproc + local_rank
        env = None
        if world_size > 1:
            env = dict(os.environ)
            ranked = rank_environment(rank=rank, local_rank=local_rank, world_size=world_size,
                                      local_world_size=nproc, node_rank=node_rank, master_addr=master_addr,
                                      master_port=master_port or 0)
            if master_port is None:  # a standby's ranks: the attempt they become gets its port at the handover
                del ranked["MASTER_PORT"]
            env.update(ranked)
        with open(layout.stdout_of(rank), "ab", buffering=0) as out, \
                open(layout.stderr_of(rank), "ab", buffering=0) as err:
            if launch is not None:
                group.procs[rank] = launch(command, cwd, env, out.fileno(), err.fileno(),
                                           group.pgid if group.procs else 0, lock_fd)
                group.local_ranks[rank] = local_rank
                continue
            group.procs[rank] = subprocess.Popen(
                command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                process_group=group.pgid if group.procs else 0, close_fds=True,
                # every rank holds the job lock too (the same open file): taken while any of them lives
                pass_fds=(lock_fd,) if lock_fd is not None else ())
        group.local_ranks[rank] = local_rank


def build_parser() -> argparse.ArgumentParser:
    """The monitor's command line (the daemon builds it in ``process.spawn_attempt_monitor``)."""
    parser = argparse.ArgumentParser(prog="python -m supervisor.processes.attempt_monitor")
    parser.add_argument("--attempt-dir", required=True, type=Path)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--lock-fd", type=int, default=None)
    parser.add_argument("--nproc-per-node", type=int, default=1, help="trainer processes (local ranks) to start")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes in the job (WORLD_SIZE = nnodes x nproc)")
    parser.add_argument("--node-rank", type=int, default=0)
    parser.add_argument("--master-addr", default=DEFAULT_MASTER_ADDR)
    parser.add_argument("--master-port", type=int, default=None,
                        help="default: MASTER_PORT from the environment, else a free port")
    parser.add_argument("--port-wait", type=float, default=DEFAULT_PORT_WAIT_S,
                        help="seconds to wait for a fixed MASTER_PORT to be free")
    parser.add_argument("--rank-stop-grace", type=float, default=DEFAULT_RANK_STOP_GRACE_S)
    parser.add_argument("--rank-exit-grace", type=float, default=DEFAULT_RANK_EXIT_GRACE_S)
    parser.add_argument("--standby", action="store_true",
                        help="the ranks are a standby trainer's: no MASTER_PORT now (handover.json brings it)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None, launch: RankLauncher | None = None) -> int:
    """Start the attempt's ranks, wait for all of them, clean up the tree and record how each ended.

    ``launch``: how ranks start (``start_ranks``); a monitor forked by ``trainer.zygote`` forks them.
    """
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    layout = AttemptLayout(args.attempt_dir)
    nproc, nnodes = max(1, args.nproc_per_node), max(1, args.nnodes)
    world_size = nproc * nnodes
    group = RankGroup()

    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, _ignore)
    for signum in FORWARDED_SIGNALS:
        signal.signal(signum, group.forward)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, _on_sigchld)
    subreaper = _become_subreaper()

    started_at = time.time()
    master_port: int | None = None
    # A standby's ranks wait, for minutes or hours, to become the next attempt: a port chosen now could be
    # taken by then, and a fixed one is the running attempt's. The daemon picks it at the handover, as a
    # cold launch's monitor would at its start (supervisor/runners/standby.py).
    if world_size > 1 and not args.standby:
        master_port, fixed = choose_master_port(args.master_port, os.environ)
        if fixed and not wait_port_free(args.master_addr, master_port, args.port_wait):
            return _failed_to_start(layout, args.lock_fd,
                                    f"MASTER_PORT {master_port} is still in use after {args.port_wait:.0f}s")
    try:
        start_ranks(command, args.cwd, layout, nproc=nproc, node_rank=args.node_rank, nnodes=nnodes,
                    master_addr=args.master_addr, master_port=master_port, group=group, lock_fd=args.lock_fd,
                    launch=launch)
    except OSError as exc:
        if group.procs:  # a later rank failed to start: the earlier ones must not wait for it
            group.signal_live(signal.SIGKILL, by_monitor=True)
            _kill_leftovers(group.pgid)
        return _failed_to_start(layout, args.lock_fd, f"cannot start the trainer: {exc}")
    rank0 = group.procs[min(group.procs)]
    try:
        write_monitor_start(layout.monitor_start, MonitorStart(
            monitor_pid=os.getpid(), trainer_pid=rank0.pid, pgid=group.pgid, started_at=started_at,
            boot_id=current_boot_id(), subreaper=subreaper, command=command, world_size=world_size,
            master_addr=args.master_addr if world_size > 1 else None, master_port=master_port,
            ranks=[RankProcess(rank=r, local_rank=group.local_ranks[r], pid=p.pid) for r, p in group.procs.items()],
            trainer_started=_start_time(rank0.pid)))
    except OSError as exc:
        return _abandon_unrecorded(group, layout, args.lock_fd, exc)
    supervise_ranks(group, wake_r, stop_grace_s=args.rank_stop_grace, exit_grace_s=args.rank_exit_grace)
    ended_at = max(e.ended_at for e in group.endings.values())
    leftovers = _kill_leftovers(group.pgid)
    first = group.endings[group.order[0]]
    write_monitor_exit(layout.monitor_exit, MonitorExit(
        exit_code=first.exit_code, signal=first.signal, ended_at=ended_at, trainer_pid=rank0.pid,
        leftovers_killed=leftovers, world_size=world_size, first_rank=first.rank,
        ranks=[group.endings[r] for r in sorted(group.endings)]))
    _release_lock(args.lock_fd)
    return 0


def _abandon_unrecorded(group: RankGroup, layout: AttemptLayout, lock_fd: int | None, exc: OSError) -> int:
    """``monitor.json`` could not be written: kill every rank's tree, try to say why, exit non-zero.

    An unrecorded trainer is one the daemon can neither stop nor tell apart from a
    stranger; it would run on beside the next attempt. Better no trainer than that.
    """
    reason = f"cannot record the trainer in {layout.monitor_start}: {exc.strerror or exc}; trainer killed"
    group.signal_live(signal.SIGKILL, by_monitor=True)
    leftovers = _kill_leftovers(group.pgid)
    try:  # disk full may let these small writes through (or not: the daemon then sees the monitor vanish)
        print(f"ml-supervisor: attempt monitor: {reason}", file=sys.stderr, flush=True)
        write_monitor_exit(layout.monitor_exit, MonitorExit(
            exit_code=None, signal="SIGKILL", ended_at=time.time(), trainer_pid=group.pgid, error=reason,
            leftovers_killed=leftovers))
    except OSError:
        pass
    _release_lock(lock_fd)
    return 1


def _start_time(pid: int) -> float | None:
    """A rank's start time as psutil reads it: with the pid and boot id, its identity."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _failed_to_start(layout: AttemptLayout, lock_fd: int | None, error: str) -> int:
    with open(layout.stderr, "ab") as err:
        err.write(f"ml-supervisor: {error}\n".encode())
    write_monitor_exit(layout.monitor_exit, MonitorExit(exit_code=127, signal=None, ended_at=time.time(),
                                                        trainer_pid=None, error=error))
    _release_lock(lock_fd)
    return 0


def _release_lock(lock_fd: int | None) -> None:
    if lock_fd is None:
        return
    try:
        os.close(lock_fd)
    except OSError as exc:
        if exc.errno != errno.EBADF:
            raise


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit now: the daemon learns of the end through our pidfd, and interpreter teardown
    # would add tens of milliseconds to every crash detection.
    os._exit(code)
