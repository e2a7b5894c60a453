"""The daemon's side of a job's zygote (``trainer/zygote.py``): start it, ask it for standbys, stop it.

One zygote per job, started for the job's second standby (the first, attempt
1's at submit, is exec'd: nothing is imported yet to fork from). It imports
once; every later standby of the job is forked from it, so the attempt a
standby backs up no longer shares the CPU with a new standby's imports after
each takeover. The zygote is a child of the daemon: its stdin is our request
pipe (it exits when the daemon does) and ``--reply-fd`` its answers. The kernel
kills it with the daemon too (``PR_SET_PDEATHSIG``): one stuck in an import reads no pipe.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.safe_read import stat_following
from supervisor.jobfiles.standbyfiles import ROOM_ARG, ROOM_ENV

ZYGOTE_MODULE = "trainer.zygote"
FORK_REPLY_WAIT_S = 5.0  # a fork of the imported interpreter takes tens of ms; this bounds a stuck zygote
LOG_FILE = "zygote.log"  # in the job dir
# The options of `python -m trainer` that belong to one attempt (trainer/cli.py), each with a value.
ATTEMPT_OPTIONS = ("--attempt-dir", "--checkpoint-dir", "--ckpt", "--attempt", "--restarts", "--deadline")


class ZygoteState:
    """Where a zygote is."""

    IMPORTING = "importing"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Zygote:
    """A running zygote of one job."""

    job_id: str
    proc: subprocess.Popen[bytes]
    reply_fd: int
    job_dir: Path  # its log and its status file are there
    config_path: Path
    config_mtime: float
    state: str = ZygoteState.IMPORTING
    failure: str | None = None
    said_why: bool = False  # it reported its failure (and would again); else it died without a word: killed
    modules: dict[str, float] = field(default_factory=dict)
    _buffer: bytes = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def poll(self) -> None:
        """Read what it said (``ready`` or ``failed``); mark it failed when it died."""
        for message in self._messages(0.0):
            self._take(message)
        if self.state != ZygoteState.FAILED and not self.alive():
            self.state, self.failure = ZygoteState.FAILED, self.failure or f"exited ({self.proc.returncode})"

    def stale(self) -> bool:
        """Whether the config or a module it imported changed on disk since."""
        if _mtime(self.config_path) != self.config_mtime:
            return True
        return any(_mtime(Path(path)) != mtime for path, mtime in self.modules.items())

    def fork(self, request: dict[str, Any]) -> int:
        """Ask for a standby monitor (the request of ``trainer/zygote.py``); its pid. OSError when none came."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + FORK_REPLY_WAIT_S
        while time.monotonic() < deadline:
            for message in self._messages(max(0.0, deadline - time.monotonic())):
                if message.get("attempt_dir") != request["attempt_dir"]:
                    self._take(message)
                    continue
                if "pid" in message:
                    return int(message["pid"])
                self.said_why = True  # e.g. a thread it cannot account for: it would refuse again
                raise OSError(f"the zygote could not fork: {message.get('error')}")
            if not self.alive():
                break
        raise OSError(f"no answer from the zygote (pid {self.proc.pid}) within {FORK_REPLY_WAIT_S:.0f}s")

    def hurry(self) -> None:
        """Give it the daemon's priority back (it imports at the standby's niceness): an attempt waits for it."""
        try:
            if os.getpriority(os.PRIO_PROCESS, self.proc.pid) != os.getpriority(os.PRIO_PROCESS, 0):
                os.setpriority(os.PRIO_PROCESS, self.proc.pid, os.getpriority(os.PRIO_PROCESS, 0))
        except OSError:  # gone; or no right to (not root: then it was never niced)
            pass

    def stop(self) -> None:
        """Kill it and reap it (the standbys it forked are separate sessions: they stay, or go, on their own)."""
        try:
            self.proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin,):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass  # it was dead: nothing reads the pipe
        try:
            os.close(self.reply_fd)
        except OSError:
            pass

    def _take(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.state = ZygoteState.READY
            self.modules = {str(k): float(v) for k, v in (message.get("modules") or {}).items()}
        elif "failed" in message:
            self.state, self.failure, self.said_why = ZygoteState.FAILED, str(message["failed"]), True

    def _messages(self, timeout: float) -> list[dict[str, Any]]:
        ready, _, _ = select.select([self.reply_fd], [], [], timeout)
        if ready:
            try:
                chunk = os.read(self.reply_fd, 65536)
            except BlockingIOError:
                chunk = b""
            self._buffer += chunk
        lines = self._buffer.split(b"\n")
        self._buffer = lines.pop()
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line))
            except ValueError:
                continue
        return messages


def start_zygote(job_id: str, trainer_command: list[str], *, cwd: str, env: dict[str, str],
                 job_dir: Path) -> Zygote:
    """Start ``python -m trainer.zygote`` for a job whose standbys run ``trainer_command`` (``python -m trainer``)."""
    reply_r, reply_w = os.pipe()
    os.set_blocking(reply_r, False)
    try:
        log = os.open(job_dir / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", ZYGOTE_MODULE, "--reply-fd", str(reply_w), "--module", trainer_command[2],
                 "--die-with", str(os.getpid()), *job_arguments(trainer_command[3:]), ROOM_ARG],
                cwd=cwd, env={**env, ROOM_ENV[0]: ROOM_ENV[1]}, stdin=subprocess.PIPE, stdout=log, stderr=log,
                start_new_session=True, pass_fds=(reply_w,), close_fds=True)
        finally:
            os.close(log)
    except BaseException:
        os.close(reply_r)
        raise
    finally:
        os.close(reply_w)
    config = Path(trainer_command[trainer_command.index("--config") + 1])
    return Zygote(job_id=job_id, proc=proc, reply_fd=reply_r, job_dir=job_dir, config_path=config,
                  config_mtime=_mtime(config))


def job_arguments(trainer_args: list[str]) -> list[str]:
    """The job's part of an attempt's trainer arguments: ``--config`` and the overrides, no attempt's option.

    A zygote outlives attempts, and the daemon and the tests tell an attempt's processes
    by the ``--attempt-dir`` on their command line: the zygote's must name none.
    """
    kept: list[str] = []
    skip = False
    for arg in trainer_args:
        if skip:
            skip = False
        elif arg in ATTEMPT_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in ATTEMPT_OPTIONS)):
            kept.append(arg)
    return kept


def _mtime(path: Path) -> float:
    """``path``'s mtime (through links: a user's module may be one), -1 when it is gone; ``FileStalled`` when
    its filesystem does not answer (unknown, not changed: the caller's OSError handling waits)."""
    try:
        info = stat_following(path)
    except FileStalled:
        raise
    except OSError:
        return -1.0
    return info.st_mtime if info is not None else -1.0
