"""The loop thread and its queue: the single writer of the store.

Other threads (runner notices, the checkpoint watcher, the GPU monitor, API
requests, signal handlers) only put work on the queue; the loop handles it,
fires due timers and polls every job at each tick.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from supervisor.core.timers import Timers
from supervisor.errors import CallPending, CallTimedOut

log = logging.getLogger("ml_supervisor")
T = TypeVar("T")


class Loop:
    """The queue, its coalescing of job wake-ups, and ``run()``.

    ``handlers`` maps a work kind to the function that handles its payload
    ("job" is built in: it calls ``poll``); ``tick`` runs every ``tick_interval``.
    """

    def __init__(self, *, poll: Callable[[str], None], tick: Callable[[], None], timers: Timers,
                 clock: Callable[[], float], tick_interval: float) -> None:
        self._poll = poll
        self._tick = tick
        self._timers = timers
        self._clock = clock
        self.tick_interval = tick_interval
        self.handlers: dict[str, Callable[[Any], None]] = {}
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        # Called on the loop thread at every turn: the systemd watchdog ping.
        self.on_turn: Callable[[], None] | None = None
        # Longest idle wait, so on_turn runs at least this often (the daemon shortens it to the watchdog's interval).
        self.max_wait = tick_interval

    def put(self, kind: str, payload: Any) -> None:
        """Queue work of ``kind`` (thread-safe)."""
        self._queue.put((kind, payload))

    def wake_job(self, job_id: str) -> None:
        """Ask the loop to look at one job soon (coalesced: many events, one poll)."""
        with self._pending_lock:
            if job_id in self._pending:
                return
            self._pending.add(job_id)
        self._queue.put(("job", job_id))

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """Run ``fn(*args)`` on the loop thread and return its result (or raise its error).

        A call the loop has not started within ``timeout`` is cancelled (``CallTimedOut``):
        a stop or restart the caller gave up on must not happen minutes later. One the
        loop is already running cannot be taken back: ``CallPending`` says it will finish.
        """
        if threading.current_thread() is self.thread or self.thread is None:
            return fn(*args)
        future: Future[T] = Future()
        self._queue.put(("call", (fn, args, future)))
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            name = getattr(fn, "__name__", "request")
            if future.cancel():
                raise CallTimedOut(f"the daemon was busy for {timeout:.0f}s and did not start {name}; "
                                   "it was cancelled and will not run: try again") from None
            if future.done():  # finished in the instant between the timeout and cancel()
                return future.result()
            raise CallPending(f"{name} was still running after {timeout:.0f}s; it will finish on its own "
                              "(check with status)") from None

    def start_thread(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="supervisor-loop", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(("noop", None))
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)

    def run(self) -> None:
        """Handle queued work as it comes; fire timers when due; tick every ``tick_interval`` seconds."""
        next_tick = 0.0
        while not self._stop.is_set():
            if self.on_turn is not None:
                try:
                    self.on_turn()
                except Exception:
                    log.exception("error in the loop hook")
            timeout = min(next_tick - time.monotonic(), self.max_wait)
            due = self._timers.next_due()
            if due is not None:
                timeout = min(timeout, due - self._clock())
            try:
                kind, payload = self._queue.get(timeout=max(0.0, timeout))
            except queue.Empty:
                kind, payload = "noop", None
            try:
                self.handle(kind, payload)
                self._timers.fire_due()
            except Exception:  # the loop must survive any single failure
                log.exception("error while handling %s %r", kind, payload)
            if time.monotonic() >= next_tick:
                try:
                    self._tick()
                except Exception:
                    log.exception("error in tick")
                next_tick = time.monotonic() + self.tick_interval

    def handle(self, kind: str, payload: Any) -> None:
        """Handle one piece of queued work (the loop does; tests may call it)."""
        if kind == "job":
            with self._pending_lock:
                self._pending.discard(payload)
            self._poll(payload)
        elif kind == "call":
            fn, args, future = payload
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
        elif kind in self.handlers:
            self.handlers[kind](payload)

    def drain(self) -> int:
        """Handle everything queued now, on the calling thread (tests without a loop thread); how many."""
        done = 0
        while True:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                return done
            self.handle(kind, payload)
            done += 1
