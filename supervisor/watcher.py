"""File events from the jobs directory (watchdog/inotify): new checkpoints, heartbeats, exits.

The daemon does not busy-poll: the trainer's and the monitor's atomic writes
(a rename into place) arrive here as events and wake the loop for that job
only. A slow safety-net tick in the loop covers anything missed (e.g. a file
written into a directory before its watch was added).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

# The files whose arrival means something to the daemon.
INTERESTING = frozenset({"heartbeat.json", "monitor.json", "monitor-exit.json", "exit.json", "manifest.jsonl"})


class _Handler(FileSystemEventHandler):
    def __init__(self, root: str, on_job: Callable[[str], None]) -> None:
        self._root = root
        self._on_job = on_job

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write", "deleted"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            if not path:
                continue
            path = os.fsdecode(path)
            if os.path.basename(path) not in INTERESTING:
                continue
            rel = os.path.relpath(path, self._root)
            job_id = rel.split(os.sep, 1)[0]
            if job_id and job_id != "..":
                self._on_job(job_id)
                return


class JobFileWatcher:
    """Calls ``on_job(job_id)`` (from watchdog's thread) when a job's interesting files change."""

    def __init__(self, jobs_dir: Path, on_job: Callable[[str], None]) -> None:
        self._jobs_dir = jobs_dir
        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_Handler(str(jobs_dir), on_job), str(jobs_dir), recursive=True)

    def start(self) -> None:
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
