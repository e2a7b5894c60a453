"""The per-attempt monitor: a tiny process that owns one trainer and records how it ended.

The conmon / containerd-shim idea. The daemon starts it in a session of its
own; it starts the trainer in a new process group, becomes the child
subreaper (so orphaned DataLoader or DDP workers are re-parented to it, not to
init), waits, kills whatever is left of the tree, and writes the exit status
durably. The daemon can be killed, restarted or upgraded meanwhile: the
trainer keeps running and its exit status is never lost.

It holds the job's lock (an flock the daemon passes as an inherited fd) for
its whole life, and so does the trainer (it inherits the same fd): the lock
is free only when neither lives, so two live trainers of one job cannot exist
even when the monitor itself is killed. A monitor that cannot record its
trainer (``monitor.json`` unwritable: disk full) kills the trainer before it
exits: nobody could find and stop that trainer otherwise.

    python -m supervisor.attempt_monitor --attempt-dir DIR --cwd DIR [--lock-fd N] -- CMD...
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import AttemptLayout

PR_SET_CHILD_SUBREAPER = 36
ORPHAN_GRACE_S = 5.0


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


def _reap_all(trainer_pid: int) -> None:
    """Reap every child (we are the subreaper) until the trainer itself exits, which is left a zombie.

    The trainer is not reaped here (``WNOWAIT``): while its zombie holds the pid,
    the pid cannot be reused, so the SIGKILL to its process group that follows
    cannot reach a stranger's group. ``_reap_trainer`` collects it afterwards.
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
        except InterruptedError:
            continue
        except ChildProcessError:
            return
        if info is None:
            continue
        if info.si_pid == trainer_pid:
            return
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            pass


def _reap_trainer(trainer_pid: int) -> int:
    """Reap the trainer (a zombie by now); its wait status."""
    while True:
        try:
            _, status = os.waitpid(trainer_pid, 0)
            return status
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _kill_group(pgid: int) -> None:
    """SIGKILL the trainer's process group (call it while the trainer's zombie pins the pgid)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_leftovers() -> list[int]:
    """Kill and reap what is left of the trainer's tree: children of ours (orphans re-parented to us)."""
    killed: list[int] = []
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


def _start_time(pid: int) -> float | None:
    """The trainer's start time as psutil reads it: with the pid and boot id, the trainer's identity."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _abandon_unrecorded(proc: subprocess.Popen[bytes], layout: AttemptLayout, exc: OSError) -> int:
    """``monitor.json`` could not be written: kill the trainer's whole tree, try to say why, exit non-zero.

    An unrecorded trainer is one the daemon can neither stop nor tell apart from a
    stranger; it would run on beside the next attempt. Better no trainer than that.
    """
    reason = f"cannot record the trainer in {layout.monitor_start}: {exc.strerror or exc}; trainer killed"
    _kill_group(proc.pid)
    _reap_trainer(proc.pid)
    leftovers = _kill_leftovers()
    try:  # disk full may let these small writes through (or not: the daemon then sees the monitor vanish)
        print(f"ml-supervisor: attempt monitor: {reason}", file=sys.stderr, flush=True)
        write_json_atomic(layout.monitor_exit, {
            "exit_code": None, "signal": "SIGKILL", "ended_at": time.time(), "trainer_pid": proc.pid,
            "error": reason, "leftovers_killed": leftovers,
        })
    except OSError:
        pass
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m supervisor.attempt_monitor")
    parser.add_argument("--attempt-dir", required=True, type=Path)
    parser.add_argument("--cwd", required=True)
    parser.add_argument("--lock-fd", type=int, default=None)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    layout = AttemptLayout(args.attempt_dir)

    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, _ignore)
    subreaper = _become_subreaper()

    started_at = time.time()
    with open(layout.stdout, "ab", buffering=0) as out, open(layout.stderr, "ab", buffering=0) as err:
        try:
            # The trainer holds the job lock too (the same open file): it stays taken while either lives.
            lock_fds = (args.lock_fd,) if args.lock_fd is not None else ()
            proc = subprocess.Popen(command, cwd=args.cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    process_group=0, close_fds=True, pass_fds=lock_fds)
        except OSError as exc:
            err.write(f"ml-supervisor: cannot start the trainer: {exc}\n".encode())
            write_json_atomic(layout.monitor_exit, {
                "exit_code": 127, "signal": None, "ended_at": time.time(), "trainer_pid": None,
                "error": f"cannot start the trainer: {exc}", "leftovers_killed": [],
            })
            return 0
    try:
        write_json_atomic(layout.monitor_start, {
            "monitor_pid": os.getpid(), "trainer_pid": proc.pid, "pgid": proc.pid, "started_at": started_at,
            "trainer_started": _start_time(proc.pid), "boot_id": current_boot_id(), "subreaper": subreaper,
            "command": command,
        })
    except OSError as exc:
        return _abandon_unrecorded(proc, layout, exc)
    _reap_all(proc.pid)
    ended_at = time.time()
    _kill_group(proc.pid)  # the trainer's zombie still pins its pgid: no stranger can own that group
    status = _reap_trainer(proc.pid)
    leftovers = _kill_leftovers()
    exit_code = os.waitstatus_to_exitcode(status)
    write_json_atomic(layout.monitor_exit, {
        "exit_code": exit_code if exit_code >= 0 else None,
        "signal": signal.Signals(-exit_code).name if exit_code < 0 else None,
        "ended_at": ended_at, "trainer_pid": proc.pid, "leftovers_killed": leftovers,
    })
    if args.lock_fd is not None:
        try:
            os.close(args.lock_fd)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit now: the daemon learns of the end through our pidfd, and interpreter teardown
    # would add tens of milliseconds to every crash detection.
    os._exit(code)
