"""The per-attempt monitor: a tiny process that owns an attempt's trainer processes and records how they ended.

The conmon / containerd-shim idea: started by the daemon in a session of its
own, it starts the ranks (``rank_group``), becomes the child subreaper, waits,
kills what is left of the tree and writes the exit status durably, so the
daemon can be killed or upgraded meanwhile without losing it. It and every rank
hold the job's lock (an inherited flock fd; a standby's monitor gets it open but
unlocked). A monitor that cannot record its trainer kills every rank: nobody
could find and stop an unrecorded trainer. SIGTERM, SIGUSR1 and SIGUSR2 are
forwarded to every live rank.

    python -m supervisor.processes.attempt_monitor --attempt-dir DIR --cwd DIR [--lock-fd N]
        [--nproc-per-node N [--master-port P] [--master-addr A] [--rank-stop-grace S] [--rank-exit-grace S]]
        [--standby] -- CMD...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import sys
import time
from pathlib import Path

import psutil

from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import (
    MonitorExit,
    MonitorStart,
    RankProcess,
    write_monitor_exit,
    write_monitor_start,
)
from supervisor.processes.boot import current_boot_id
from supervisor.processes.ports import DEFAULT_MASTER_ADDR, DEFAULT_PORT_WAIT_S, choose_master_port, wait_port_free
from supervisor.processes.rank_group import (
    DEFAULT_RANK_EXIT_GRACE_S,
    DEFAULT_RANK_STOP_GRACE_S,
    RankGroup,
    RankLauncher,
    on_sigchld,
    start_ranks,
    supervise_ranks,
)

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 5.0
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


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
    signal.signal(signal.SIGCHLD, on_sigchld)
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
