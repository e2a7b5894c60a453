"""Deadlines for file operations that can stall: a hung NFS server, a disk that does not answer.

A read (or ``stat``, ``listdir``) of a path a user controls (an attempt dir, a checkpoint dir, the shared
filesystem of a Slurm cluster) runs on a reader thread while the caller waits at most ``timeout_s``. One that
does not answer in time raises ``FileStalled`` (a ``TimeoutError``, so an ``OSError``: the callers that retry a
descriptor shortage later retry this the same way) and its directory is *stalled*: until that operation
returns, every operation keyed on the same directory fails at once. So a hung mount costs each directory one
deadline and one thread, not one per read, and the loop thread never waits longer than the deadline.
The threads are bounded (``max_threads``): with every one of them stuck, operations fail at once.

Off by default: the trainer, the tools and the in-process tests run the operations inline. The daemon turns it
on at start (``enable``). An operation started on a reader thread runs inline (no nesting).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("ml_supervisor")
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_THREADS = 32


class FileStalled(TimeoutError):
    """A file operation did not answer within the deadline (or its directory has one that still does not)."""

    def __init__(self, path: str | Path, why: str) -> None:
        super().__init__(errno.ETIMEDOUT, why, os.fspath(path))


class _Task:
    __slots__ = ("done", "error", "fn", "key", "result")

    def __init__(self, fn: Callable[[], Any], key: str) -> None:
        self.fn = fn
        self.key = key
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class Deadlines:
    """Reader threads, the deadline, and the directories whose operations have not answered."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        if timeout_s <= 0 or max_threads < 1:
            raise ValueError("a deadline needs timeout_s > 0 and max_threads >= 1")
        self.timeout_s = timeout_s
        self.max_threads = max_threads
        self._reset()
        _instances.add(self)

    def _reset(self) -> None:
        """No threads, nothing stalled: at creation, and in a forked child (which has none of the threads)."""
        self._lock = threading.Lock()
        self._tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self._started = 0
        self._busy = 0
        self._stalled: dict[str, _Task] = {}
        self._local = threading.local()

    def stalled(self) -> list[str]:
        """The directories with an operation that has not answered (yet)."""
        with self._lock:
            return sorted(self._stalled)

    def run(self, path: str | Path, fn: Callable[[], T], *, key: str | Path | None = None) -> T:
        """``fn()``'s result (or its exception), or ``FileStalled`` when it does not answer in time.

        ``key`` (default: ``path``'s directory) is what a stall blocks: later operations with the same key
        fail at once until the stalled one returns.
        """
        if getattr(self._local, "reader", False):
            return fn()  # already on a reader thread (the operation calls another): inline
        key = os.fspath(key) if key is not None else (os.path.dirname(os.fspath(path)) or ".")
        task = _Task(fn, key)
        with self._lock:
            if key in self._stalled:
                raise FileStalled(path, self._why(key))
            if self._busy >= self.max_threads:
                raise FileStalled(path, f"every reader thread ({self.max_threads}) waits on a file that does "
                                        "not answer")
            self._busy += 1
            if self._busy > self._started:
                self._started += 1
                threading.Thread(target=self._work, name=f"file-reader-{self._started}", daemon=True).start()
        self._tasks.put(task)
        if not task.done.wait(self.timeout_s):
            with self._lock:
                if not task.done.is_set():  # it may have answered between the wait and the lock
                    self._stalled[key] = task
                    log.warning("%s did not answer within %gs: the jobs whose files are in %s wait until it does",
                                os.fspath(path), self.timeout_s, key)
                    raise FileStalled(path, self._why(key))
        if task.error is not None:
            raise task.error
        result: T = task.result
        return result

    def _why(self, key: str) -> str:
        """One reason per directory, the same while it lasts (it becomes a job's ``wait_reason``)."""
        return f"{key} does not answer (a read there took more than {self.timeout_s:g}s)"

    def _work(self) -> None:
        self._local.reader = True
        while True:
            task = self._tasks.get()
            try:
                task.result = task.fn()
            except BaseException as exc:  # handed to the caller (it re-raises), never lost on this thread
                task.error = exc
            with self._lock:
                task.done.set()
                self._busy -= 1
                if self._stalled.get(task.key) is task:
                    del self._stalled[task.key]
                    log.warning("%s answers again", task.key)
            del task  # the result is the caller's: not kept alive while this thread waits for the next task


_active: Deadlines | None = None
_instances: weakref.WeakSet[Deadlines] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for instance in list(_instances):
        instance._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)


def enable(timeout_s: float = DEFAULT_TIMEOUT_S, max_threads: int = DEFAULT_MAX_THREADS) -> Deadlines:
    """Run guarded operations on reader threads with a deadline from now on (the daemon calls this at start)."""
    global _active
    _active = Deadlines(timeout_s, max_threads)
    return _active


def disable() -> None:
    """Run guarded operations inline again (threads stuck on a stalled file are left to finish)."""
    global _active
    _active = None


def active() -> Deadlines | None:
    return _active


def guarded(path: str | Path, fn: Callable[[], T], *, key: str | Path | None = None) -> T:
    """``fn()`` under the deadline when one is enabled, else inline (see ``Deadlines.run``)."""
    deadlines = _active
    if deadlines is None:
        return fn()
    return deadlines.run(path, fn, key=key)
