"""The daemon's side of sweeps: keep one worker process alive for every unfinished sweep.

A worker runs in its own session (a daemon killed by anything leaves it running, like an
attempt monitor) and holds ``worker.lock``; the manager starts one wherever that lock is
free and the sweep is not finished: at daemon start, after a reboot, and when a worker
died. When a sweep has finished, it raises the sweep's alert once.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.processes.control import try_lock
from supervisor.sweep.files import FINISHED, SweepDir, list_sweeps

log = logging.getLogger("ml_supervisor.sweep")
CHECK_INTERVAL = 2.0

FinishedHook = Callable[[SweepDir, dict[str, object]], None]


class SweepManager:
    """Starts and restarts sweep workers; reports finished sweeps to ``on_finished`` once each."""

    def __init__(self, state_dir: Path, *, on_finished: FinishedHook | None = None,
                 interval: float = CHECK_INTERVAL) -> None:
        self.state_dir = state_dir
        self.on_finished = on_finished
        self.interval = interval
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a new sweep: check now, and keep checking while one is unfinished
        self._thread = threading.Thread(target=self._loop, name="sweeps", daemon=True)

    def start(self) -> None:
        if self.check():
            self._wake.set()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; workers keep running (the next daemon finds them by their lock)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def wake(self) -> None:
        """A sweep was created: check at once, then every ``interval`` until no sweep is unfinished."""
        self._wake.set()

    def _loop(self) -> None:
        # With no unfinished sweep the thread sleeps until woken: an idle daemon has no periodic wake-ups.
        active = False
        while True:
            self._wake.wait(self.interval if active else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                active = self.check()
            except Exception:  # a bad sweep dir must not end the watch over the others
                log.exception("checking sweeps failed")
                active = True

    def check(self) -> bool:
        """Start a worker for each unfinished sweep without one; alert on newly finished sweeps.

        Returns whether any sweep is still unfinished (the loop keeps checking only then).
        """
        unfinished = False
        with self._lock:
            for sweep_id, child in list(self._children.items()):
                if child.poll() is not None:  # reap: our own children must not stay zombies
                    del self._children[sweep_id]
            for sweep in list_sweeps(self.state_dir):
                state = sweep.state()
                if state.get("state") in FINISHED:
                    self._announce(sweep, state)
                else:
                    unfinished = True
                    if sweep.id not in self._children and _lock_free(sweep):
                        self._spawn(sweep)
        return unfinished

    def _spawn(self, sweep: SweepDir) -> None:
        with open(sweep.log, "ab") as out:
            child = subprocess.Popen(
                [sys.executable, "-m", "supervisor.sweep.worker", "--state-dir", str(self.state_dir),
                 "--sweep", sweep.id],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, env=dict(os.environ))
        self._children[sweep.id] = child
        log.info("sweep %s: worker started (pid %d)", sweep.id, child.pid)

    def _announce(self, sweep: SweepDir, state: dict[str, object]) -> None:
        marker = sweep.root / "announced.json"
        if marker.exists() or self.on_finished is None:
            return
        try:
            self.on_finished(sweep, state)
        finally:
            write_json_atomic(marker, {"state": state.get("state")})


def _lock_free(sweep: SweepDir) -> bool:
    fd = try_lock(sweep.lock)
    if fd is None:
        return False  # a live worker (maybe a previous daemon's) runs it
    os.close(fd)
    return True
