"""Processes: start an attempt's monitor, tell whether it lives, stop a trainer's whole tree.

One stop routine for everything: SIGTERM to the trainer's process group, a
grace deadline, then SIGKILL to the group and to every descendant of the
attempt monitor, so no DataLoader or DDP worker survives holding GPU memory.

A pid alone names nobody: after a reboot or a long uptime it is some other
process. Every process is identified by (pid, start time, boot id) before it
is signalled (``is_same_process``); a group is signalled only through a
leader proven to be ours, or member by member, each proven by our
environment marker.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

from supervisor.access import RunAs
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.processes.boot import current_boot_id

# psutil's create_time has a resolution of a clock tick; allow for rounding.
_CREATE_TIME_SLACK_S = 0.05
# What ``spawn_attempt_monitor`` runs (also how a standby's monitor is told from a stranger by its command line).
MONITOR_MODULE = "supervisor.processes.attempt_monitor"


def try_lock(path: Path) -> int | None:
    """Open ``path`` and take an exclusive flock without blocking: the fd, or ``None`` if held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def spawn_attempt_monitor(attempt: AttemptLayout, command: Sequence[str], *, cwd: str, env: Mapping[str, str],
                          lock_fd: int | None, monitor_args: Sequence[str] = (),
                          run_as: RunAs | None = None) -> tuple[int, float]:
    """Start ``python -m supervisor.processes.attempt_monitor`` for ``command``; return its pid and start time.

    The monitor gets a session of its own (``start_new_session``): a daemon
    killed by a terminal, by systemd (``KillMode=process``) or by SIGKILL leaves
    it and its trainer running. ``monitor_args`` are the monitor's own options
    (``--nproc-per-node N`` for a multi-rank attempt). ``run_as``: the monitor,
    and so its trainer, runs as that user (uid, gid, supplementary groups), and
    the attempt dir becomes theirs.
    """
    attempt.dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", MONITOR_MODULE, "--attempt-dir", str(attempt.dir), "--cwd", cwd]
    pass_fds: tuple[int, ...] = ()
    if lock_fd is not None:
        argv += ["--lock-fd", str(lock_fd)]
        pass_fds = (lock_fd,)
    argv += [*monitor_args, "--", *command]
    # O_NOFOLLOW: in a user's attempt dir a planted link must not make the daemon append to a file of its choice.
    log = os.open(attempt.dir / "monitor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                  0o644)
    identity: dict[str, Any] = {}
    if run_as is not None:
        os.chown(attempt.dir, run_as.uid, run_as.gid)  # after the daemon's own file is open in it
        identity = {"user": run_as.uid, "group": run_as.gid, "extra_groups": list(run_as.groups), "umask": 0o022}
    try:
        proc = subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, pass_fds=pass_fds, close_fds=True, **identity)
    finally:
        os.close(log)
    try:
        started = psutil.Process(proc.pid).create_time()
    except psutil.Error:
        started = 0.0
    # The daemon never waits on the monitor (it may outlive us); don't leave a zombie either.
    _detach(proc)
    return proc.pid, started


_spawned_monitors: set[int] = set()


def _detach(proc: subprocess.Popen[bytes]) -> None:
    # Popen would keep an un-waited child on a module list and poll it; we reap the
    # monitor ourselves (reap_monitors), by pid only: waitpid(-1) would steal the exit
    # status of unrelated subprocess.run calls in other threads.
    _spawned_monitors.add(proc.pid)
    proc.returncode = 0


def reap_monitors() -> None:
    """Reap exited monitors that are our own children (adopted ones belong to init)."""
    for pid in list(_spawned_monitors):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done = pid
        if done:
            _spawned_monitors.discard(pid)


def is_alive(pid: int | None, create_time: float | None) -> bool:
    """Whether ``pid`` is still the process we started (guards against pid reuse).

    Without a ``create_time`` this only says that *some* process has the pid:
    never signal on that alone (``is_same_process`` is the check for that).
    """
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if create_time and abs(proc.create_time() - create_time) > _CREATE_TIME_SLACK_S:
            return False
        return True
    except psutil.Error:
        return False


def is_same_process(pid: int | None, started: float | None, boot_id: str | None = None,
                    uid: int | None = None) -> bool:
    """Whether ``pid`` is provably the process that started at ``started`` in boot ``boot_id``.

    ``False`` when anything is unknown: an unproven process is not ours to signal.
    ``boot_id`` ``None`` means "recorded in this boot" (the caller knows it). ``uid``:
    the process must also run as that user (a job run as its owner writes the files
    its pids come from: they must never name anyone else's process).
    """
    if not pid or not started:
        return False
    if boot_id is not None and boot_id != current_boot_id():
        return False  # a process of an earlier boot is gone, whatever has its pid now
    if uid is not None and process_uid(pid) != uid:
        return False
    return is_alive(pid, started)


def process_uid(pid: int) -> int | None:
    """The real uid ``pid`` runs as, ``None`` when it is gone."""
    try:
        return int(psutil.Process(pid).uids().real)
    except psutil.Error:
        return None


def start_time(pid: int) -> float | None:
    """The start time of ``pid`` (psutil's create_time), ``None`` when it is gone or unreadable."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def has_env_marker(pid: int, key: str, value: str) -> bool:
    """Whether ``pid`` carries ``key=value`` in its environment (our trainers do; others, or unreadable, do not)."""
    try:
        return psutil.Process(pid).environ().get(key) == value
    except psutil.Error:
        return False


class ProcessHandle:
    """A live process pinned by a pidfd: liveness checks cost one poll(2), and pid reuse cannot fool them."""

    def __init__(self, pid: int | None, create_time: float | None) -> None:
        self.fd: int | None = None
        if pid and is_alive(pid, create_time):  # verify identity once, when the handle is made
            try:
                self.fd = os.pidfd_open(pid)
            except OSError:
                self.fd = None

    def alive(self) -> bool:
        if self.fd is None:
            return False
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if poller.poll(0):  # a pidfd becomes readable when the process exits
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def signal_group(pgid: int | None, signum: int) -> bool:
    """Send ``signum`` to a process group; ``False`` when it is gone."""
    if not pgid:
        return False
    try:
        os.killpg(pgid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_process(pid: int | None, signum: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def tree_pids(monitor_pid: int | None, pgid: int | None) -> set[int]:
    """Every live process of an attempt: the monitor's descendants and the trainer's process group."""
    pids: set[int] = set()
    if monitor_pid:
        try:
            pids.update(p.pid for p in psutil.Process(monitor_pid).children(recursive=True))
        except psutil.Error:
            pass
    if pgid:
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(proc.pid) == pgid:
                    pids.add(proc.pid)
            except (ProcessLookupError, PermissionError):
                continue
    return {p for p in pids if _not_zombie(p)}


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> set[int]:
    """The live processes of process group ``pgid``."""
    return {p for p in tree_pids(None, pgid)}


def kill_tree(monitor_pid: int | None, pgid: int | None, extra: set[int] | None = None) -> list[int]:
    """SIGKILL the trainer's group, every descendant of the monitor and ``extra`` (the monitor lives on to report).

    The caller proves each argument is ours first (``is_same_process``): this signals what it is given.
    """
    # Listed before the group's SIGKILL, so the answer names the trainer too (dead, it is no longer listed).
    victims = sorted(tree_pids(monitor_pid, pgid) | (extra or set()))
    signal_group(pgid, signal.SIGKILL)
    for pid in victims:
        signal_process(pid, signal.SIGKILL)
    return victims
