"""Save the stacks of a hung trainer before it is stopped.

Two sources, both optional, neither needing any change to the user's code:

- SIGUSR2: the trainer registered ``faulthandler`` on it (trainer side), which
  appends every thread's Python stack to ``<attempt>/stacks.txt``. The handler
  is C code that runs even while a thread holds the GIL in a stuck kernel.
- ``py-spy dump --pid``, when py-spy is on PATH: Python stacks read from
  outside, into ``<attempt>/py-spy.txt``. It needs ptrace permission (same user
  and ``kernel.yama.ptrace_scope`` 0, or CAP_SYS_PTRACE); its error is saved
  in the file when it fails.

Send it to the TRAINER's pid. For a multi-rank attempt, call it once per rank
(``rank=``): each rank writes its own ``stacks.rank<N>.txt`` (rank 0:
``stacks.txt``); or signal the attempt monitor, which forwards SIGUSR2 to every rank.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from supervisor.jobfiles.layout import AttemptLayout, per_rank_name
from supervisor.jobfiles.safe_read import regular_size

log = logging.getLogger(__name__)

# faulthandler writes all threads in one go; once the file has stopped growing for this long, it is done
_SETTLE_S = 0.3
_POLL_S = 0.05


def dump_stacks(pid: int, attempt_dir: Path, *, timeout_s: float = 10.0, rank: int = 0) -> list[Path]:
    """Ask ``pid`` for its stacks (SIGUSR2) and run py-spy on it; the files that received a dump.

    SIGUSR2 is only sent when the process has a handler for it (read from
    ``/proc/<pid>/status``): its default action would kill the process before
    the daemon's own stop routine, with the wrong exit status. Waits up to
    ``timeout_s`` for ``stacks.txt`` (``stacks.rank<N>.txt`` for ``rank`` N) to
    grow; py-spy gets the same limit.
    """
    attempt_dir = Path(attempt_dir)
    written: list[Path] = []
    stacks = AttemptLayout(attempt_dir).stacks_of(rank)
    if _sigusr2_caught(pid) is False:
        log.warning("pid %d has no SIGUSR2 handler (faulthandler not registered yet): no stacks.txt", pid)
    else:
        before = _size(stacks)
        try:
            os.kill(pid, signal.SIGUSR2)
        except (ProcessLookupError, PermissionError) as exc:
            log.warning("cannot signal pid %d for its stacks: %s", pid, exc)
        else:
            if _wait_growth(stacks, before, timeout_s):
                written.append(stacks)
            else:
                log.warning("pid %d wrote no stacks to %s within %.0fs", pid, stacks, timeout_s)
    pyspy = _py_spy(pid, attempt_dir / per_rank_name("py-spy.txt", rank), timeout_s)
    if pyspy is not None:
        written.append(pyspy)
    return written


def _sigusr2_caught(pid: int) -> bool | None:
    """Whether ``pid`` has a handler for SIGUSR2 (``None``: cannot tell, e.g. not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    mask = int(line.split()[1], 16)
                    return bool(mask & (1 << (signal.SIGUSR2 - 1)))
    except (OSError, ValueError, IndexError):
        return None
    return None


def _size(path: Path) -> int:
    """The size of the stack file (a regular file, not through a link); 0 when missing or not answering."""
    try:
        return regular_size(path) or 0
    except OSError:
        return 0


def _wait_growth(path: Path, before: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    size, changed_at = before, time.monotonic()
    while time.monotonic() < deadline:
        now_size = _size(path)
        if now_size != size:
            size, changed_at = now_size, time.monotonic()
        elif size > before and time.monotonic() - changed_at >= _SETTLE_S:
            return True
        time.sleep(_POLL_S)
    return _size(path) > before


def _py_spy(pid: int, out: Path, timeout_s: float) -> Path | None:
    exe = shutil.which("py-spy")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        _write_report(out, f"py-spy dump --pid {pid}: no answer within {timeout_s:.0f}s\n")
        return None
    except OSError as exc:
        _write_report(out, f"py-spy dump --pid {pid}: cannot run: {exc}\n")
        return None
    _write_report(out, proc.stdout + (f"\n--- stderr (exit {proc.returncode}) ---\n{proc.stderr}" if proc.stderr
                                      or proc.returncode else ""))
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        log.warning("py-spy dump --pid %d failed (exit %d): %s", pid, proc.returncode, last)
        return None
    return out


def _write_report(out: Path, text: str) -> None:
    """Write ``out`` without following a link: a job run as its owner has its attempt dir in their hands,
    and the daemon (root) must not overwrite a file a planted link points at."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        log.warning("cannot write %s: %s", out, exc)
        return
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
