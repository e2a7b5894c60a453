"""The trainer's signal handling (torch-free; installed before torch is imported).

    SIGTERM  stop: checkpoint at the next batch boundary, exit 143 (see ``ManifestCheckpoint``)
    SIGINT   Ctrl+C: Lightning's graceful KeyboardInterrupt, exit 130, no checkpoint
    SIGUSR1  save a checkpoint at the next train batch end and keep training
    SIGUSR2  dump every thread's stack to ``stacks.txt`` (faulthandler, C level) and keep going

Handlers only record; the training loop acts at a batch boundary. During
``trainer.fit`` Lightning's own SIGTERM handler is composed with ours and raises
``SIGTERMException`` at the next boundary. Outside ``fit`` (the slow imports,
building the model) a SIGTERM raises ``Terminated`` at once: there is nothing
to save yet, and waiting would only make the daemon escalate to SIGKILL.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import stat
import sys
from pathlib import Path
from types import FrameType
from typing import IO

EXIT_SIGNAL_BASE = 128


class Terminated(BaseException):
    """A stop signal arrived while no fit was running (BaseException: user ``except Exception`` must not eat it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code_for(signum: int) -> int:
    """The shell convention for death by a signal: 128 + its number (SIGTERM: 143)."""
    return EXIT_SIGNAL_BASE + int(signum)


class SignalState:
    """What signals arrived, shared by the CLI and the callbacks of one process."""

    def __init__(self, stacks_path: str | Path) -> None:
        self.stacks_path = Path(stacks_path)
        self.stop_signal: int | None = None  # SIGTERM or SIGINT, once received
        self.save_requested = False  # SIGUSR1, until the checkpoint callback takes it
        # Multi-rank: a save every rank agreed on this step (RankAgreement), until the checkpoint callback takes it.
        self.agreed_save = False
        # While True a stop signal only records (Lightning acts at the next batch boundary);
        # while False it raises Terminated at once.
        self.deferred = False
        # Set while the exit record is being written: a late signal must not interrupt that.
        self.finishing = False
        self._stacks_file: IO[str] | None = None

    def install(self) -> None:
        """Install the handlers. Call from the main thread, before ``trainer.fit``."""
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGUSR1, self._on_save_request)
        self.register_stack_dump()

    def register_stack_dump(self) -> None:
        """(Re-)register faulthandler on SIGUSR2.

        Lightning's ``_SignalConnector`` restores every handler it saw when fit
        ends, and Python's view of SIGUSR2 is SIG_DFL (faulthandler installs at C
        level), so after fit SIGUSR2 would kill the process: call this again
        then. Unregister first: ``register`` does not reinstall a handler it
        believes is still in place.
        """
        if self._stacks_file is None:
            self.stacks_path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered text file kept open for the process's life; faulthandler writes to its fd.
            self._stacks_file = _open_stacks(self.stacks_path)
        faulthandler.unregister(signal.SIGUSR2)
        faulthandler.register(signal.SIGUSR2, file=self._stacks_file, all_threads=True, chain=False)

    def take_save_request(self) -> bool:
        """True once per SIGUSR1 (the caller then saves)."""
        if not self.save_requested:
            return False
        self.save_requested = False
        return True

    def take_agreed_save(self) -> bool:
        """True once per save all ranks agreed on (multi-rank runs; the caller then saves)."""
        if not self.agreed_save:
            return False
        self.agreed_save = False
        return True

    @property
    def stop_signal_name(self) -> str | None:
        """The stop signal's name (``SIGTERM``), or None before one came."""
        return signal.Signals(self.stop_signal).name if self.stop_signal is not None else None

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        first = self.stop_signal is None
        if first:
            self.stop_signal = signum
        if self.finishing:
            return
        if signum == signal.SIGINT:
            # Keep Ctrl+C's usual meaning; Lightning turns it into a graceful shutdown inside fit.
            raise KeyboardInterrupt
        if not self.deferred and first:
            raise Terminated(signum)

    def _on_save_request(self, signum: int, frame: FrameType | None) -> None:
        self.save_requested = True


def _open_stacks(path: Path) -> IO[str]:
    """``stacks.txt`` to append to; stderr when it cannot be (a FIFO, a link or a directory in its place: the
    open does not wait for a FIFO's reader, and the stacks still go to the attempt's log)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o644)
    except OSError as exc:
        print(f"ml-supervisor trainer: cannot write stacks to {path} ({exc.strerror}); they go to stderr",
              file=sys.stderr, flush=True)
        return sys.stderr
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        print(f"ml-supervisor trainer: {path} is not a regular file; stacks go to stderr", file=sys.stderr,
              flush=True)
        return sys.stderr
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")
