"""Events instead of polling: attempt exits (pidfd) and new checkpoints (watchdog/inotify).

- **Exits.** Each attempt monitor is pinned by a pidfd in one epoll set; the
  kernel makes it readable the instant the monitor exits (right after it wrote
  its exit status), and this thread wakes the loop for that job. No polling, no
  pid-reuse races, and it works for monitors adopted after a daemon restart.
- **Checkpoints.** A non-recursive inotify watch (watchdog) on each live job's
  ``checkpoints/`` directory, asking only for close-after-write: one event per
  manifest append or finished save, none for the thousands of writes inside a
  checkpoint.
- **Heartbeats are not watched**: nothing has to wake up when a trainer makes
  progress, and at 20 jobs the heartbeat events alone cost the daemon about 1 %
  of a core (measured, see bench/daemon_footprint.py). The hang clock reads
  them on the loop's tick instead.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileClosedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch

from supervisor.jobfiles.deadline import FileStalled, guarded
from supervisor.processes.control import is_alive

log = logging.getLogger("ml_supervisor")
EMITTER_TIMEOUT_S = 5.0


class ExitWatcher:
    """Calls ``on_exit(key)`` from its own thread when a watched process exits."""

    def __init__(self, on_exit: Callable[[str], None]) -> None:
        self._on_exit = on_exit
        self._epoll = select.epoll()
        self._keys: dict[int, str] = {}
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._thread = threading.Thread(target=self._run, name="exit-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, key: str, pid: int | None, create_time: float | None) -> bool:
        """Watch ``pid`` (if it is still the process started at ``create_time``); ``False`` if already gone."""
        if not pid or not is_alive(pid, create_time):
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        with self._lock:
            self._keys[fd] = key
            self._epoll.register(fd, select.EPOLLIN)
        return True

    def watch_readable(self, key: str, fd: int) -> None:
        """Call ``on_exit(key)`` once, when ``fd`` has something to read (a copy is watched: ``fd`` stays the
        caller's, to read). A zygote's reply pipe: its ``ready`` serves the attempt that waits on it."""
        copy = os.dup(fd)
        with self._lock:
            self._keys[copy] = key
            self._epoll.register(copy, select.EPOLLIN)

    def unwatch(self, key: str) -> None:
        """Stop watching every process watched under ``key`` and close their pidfds."""
        with self._lock:
            for fd in [fd for fd, k in self._keys.items() if k == key]:
                del self._keys[fd]
                self._epoll.unregister(fd)
                os.close(fd)

    def stop(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        with self._lock:
            for fd in list(self._keys):
                os.close(fd)
            self._keys.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        while True:
            for fd, _ in self._epoll.poll():
                if fd == self._wake_r:
                    return
                with self._lock:
                    key = self._keys.pop(fd, None)
                    if key is None:  # unwatched meanwhile: that fd is closed (its number may be reused)
                        continue
                    self._epoll.unregister(fd)
                    os.close(fd)
                self._on_exit(key)


class _CheckpointHandler(FileSystemEventHandler):
    def __init__(self, job_id: str, on_checkpoint: Callable[[str], None]) -> None:
        self._job_id = job_id
        self._on_checkpoint = on_checkpoint

    def on_closed(self, event: FileSystemEvent) -> None:
        if os.path.basename(os.fsdecode(event.src_path)) == "manifest.jsonl":
            self._on_checkpoint(self._job_id)


class CheckpointWatcher:
    """Calls ``on_checkpoint(job_id)`` (from watchdog's thread) when a job's manifest is appended to."""

    def __init__(self, on_checkpoint: Callable[[str], None]) -> None:
        self._on_checkpoint = on_checkpoint
        # Each watch has an emitter thread that wakes every `timeout` seconds even when nothing
        # happens (events themselves arrive at once): at 20 jobs the default 1 s was a tenth
        # of the daemon's CPU. A longer timeout only delays stop().
        self._observer = Observer(timeout=EMITTER_TIMEOUT_S)
        self._observer.daemon = True
        self._watches: dict[str, ObservedWatch] = {}

    def start(self) -> None:
        self._observer.start()

    def watch(self, job_id: str, checkpoint_dir: Path) -> None:
        if job_id in self._watches:
            return
        try:
            # The job owner's directory: on a filesystem that does not answer, the loop does not wait on it
            # (unwatched, the manifest is still read at every poll of the job).
            guarded(checkpoint_dir, lambda: checkpoint_dir.mkdir(parents=True, exist_ok=True), key=checkpoint_dir)
        except FileStalled:
            log.warning("job %s: %s does not answer; its checkpoints are not watched", job_id, checkpoint_dir)
            return
        self._watches[job_id] = self._observer.schedule(
            _CheckpointHandler(job_id, self._on_checkpoint), str(checkpoint_dir), recursive=False,
            event_filter=[FileClosedEvent])

    def unwatch(self, job_id: str) -> None:
        watch = self._watches.pop(job_id, None)
        if watch is not None:
            try:
                self._observer.unschedule(watch)
            except KeyError:
                pass

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=EMITTER_TIMEOUT_S + 1)
