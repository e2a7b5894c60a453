"""Speak systemd's sd_notify protocol, with the standard library only.

``Notifier`` sends ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1`` to
the datagram socket systemd names in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for
the abstract namespace). It is a silent no-op when the variable is unset (run by
hand, in tests, under another init), and it never raises: a notification that
cannot be sent is logged once at DEBUG and forgotten, because systemd being
unreachable must never stop the supervisor.

Watchdog: call ``watchdog_tick()`` from the daemon's MAIN LOOP on every
iteration. It sends ``WATCHDOG=1`` at most once per ``watchdog_interval()``
(half of ``$WATCHDOG_USEC``), so the pings stop by themselves when the loop
hangs and systemd restarts the daemon. Never ping from a separate timer thread:
that thread would keep pinging while the loop is stuck.

The other end, a socket that collects the datagrams, is test code
(``tests/support/notify_listener.py``).

``stderr_is_journal`` tells whether stderr really is journald's stream (so log
lines may carry ``<N>`` sd-daemon priority prefixes; see ``supervisor.logsetup``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Mapping

_log = logging.getLogger("ml_supervisor.sdnotify")

# Variables systemd hands the daemon for itself; strip them from every child's
# environment (trainers, workers) so only the daemon can talk to systemd.
SYSTEMD_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str) -> str | None:
    """The ``sendto`` address for ``$NOTIFY_SOCKET``, or None for a form we cannot use."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:CID:PORT" (systemd 254+, for VMs): not for a node daemon


class Notifier:
    """Send sd_notify messages to systemd; a no-op without ``$NOTIFY_SOCKET``.

    Thread-safe. Every method returns True when the datagram was sent.
    """

    def __init__(self, notify_socket: str | None, *, watchdog_usec: int | None = None,
                 watchdog_pid: int | None = None) -> None:
        self.notify_socket = notify_socket or None
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            _log.warning("NOTIFY_SOCKET=%r is not a unix socket address; systemd notifications are off",
                         notify_socket)
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, unset_environment: bool = False) -> Notifier:
        """A notifier for the ``NOTIFY_SOCKET`` / ``WATCHDOG_USEC`` / ``WATCHDOG_PID`` of ``environ``.

        ``environ`` defaults to ``os.environ``. ``unset_environment`` removes the
        three variables from ``os.environ`` afterwards (like ``sd_notify``'s
        flag), so children started later cannot inherit them.
        """
        env = os.environ if environ is None else environ
        usec = _int_or_none(env.get("WATCHDOG_USEC"))
        pid = _int_or_none(env.get("WATCHDOG_PID"))
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_usec=usec, watchdog_pid=pid)
        if unset_environment:
            for key in SYSTEMD_NOTIFY_ENV:
                os.environ.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify."""
        return self._address is not None

    # ------------------------------------------------------------------ messages

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram (the raw sd_notify call)."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8", errors="replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    self._sock.setblocking(False)  # a stuck systemd must never stall the daemon loop
                self._sock.sendto(payload, self._address)
                return True
            except OSError as exc:
                if not self._warned:  # once: systemd gone is not worth a log line per tick
                    _log.debug("sd_notify to %s failed: %s", self.notify_socket, exc)
                    self._warned = True
                return False

    def ready(self) -> bool:
        """``READY=1``: start-up is done, the daemon serves (Type=notify units become active)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """``STATUS=<text>``, shown by ``systemctl status`` (one line, e.g. "3 running, 1 queued")."""
        return self.notify("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive. Prefer ``watchdog_tick`` from the loop."""
        sent = self.notify("WATCHDOG=1")
        if sent:
            self._last_ping = time.monotonic()
        return sent

    def stopping(self) -> bool:
        """``STOPPING=1``: shutting down (the jobs keep running; the next daemon adopts them)."""
        return self.notify("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for ``seconds`` more to start or stop (long job recovery)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    # ------------------------------------------------------------------ watchdog

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of ``$WATCHDOG_USEC``), None when none is requested.

        None also when ``$WATCHDOG_PID`` names another process: the request is
        then for that process, not this one (e.g. a forked child).
        """
        if self._watchdog_usec is None or self._address is None:
            return None
        if self._watchdog_pid is not None and self._watchdog_pid != os.getpid():
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def watchdog_tick(self, now: float | None = None) -> bool:
        """Ping when ``watchdog_interval()`` has passed since the last ping; call it every loop iteration.

        ``now`` is a ``time.monotonic()`` value (injectable for tests). Returns
        True when a ping was sent.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return False
        now = time.monotonic() if now is None else now
        if self._last_ping is not None and now - self._last_ping < interval:
            return False
        sent = self.notify("WATCHDOG=1")
        if sent:
            self._last_ping = now
        return sent

    def close(self) -> None:
        """Close the socket (the notifier reopens it if used again)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


# ---------------------------------------------------------------------- journald-friendly logs

def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is connected to journald (``$JOURNAL_STREAM`` names its device:inode)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return st.st_dev == int(device) and st.st_ino == int(inode)
    except (OSError, ValueError):
        return False
