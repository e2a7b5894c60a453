"""An attempt's ranks inside the monitor: their environment, how they start, and stopping the rest when one ends.

Started the way torchrun's agent does it: one trainer per local rank, each a
direct child of the monitor, all in rank 0's process group, each with the
environment Lightning reads for externally launched processes.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import RankEnding

# SIGTERM -> SIGKILL for the surviving ranks after a rank died: they cannot save (a save is a
# collective), they only need to write their exit records. Short, so the attempt ends within a second.
DEFAULT_RANK_STOP_GRACE_S = 0.8
# After a rank ended gracefully (completed, or stopped by SIGTERM): time for the others to finish
# their own way (the last save, W&B's finish) before they are stopped.
DEFAULT_RANK_EXIT_GRACE_S = 60.0
# Exit codes that mean "ended its own way": completed, or stopped by SIGINT/SIGTERM (128 + N).
GRACEFUL_EXIT_CODES = frozenset({0, 128 + signal.SIGINT, 128 + signal.SIGTERM})


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


def on_sigchld(signum: int, frame: FrameType | None) -> None:
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

