"""The other end of sd_notify, for tests: a datagram socket that collects the messages, like systemd's
end of ``$NOTIFY_SOCKET`` (set ``NOTIFY_SOCKET=listener.address`` in the environment of the process under test).
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path


class NotifyListener:
    """A datagram socket that collects sd_notify messages, like systemd's end of ``$NOTIFY_SOCKET``.

    ``NotifyListener()`` binds a fresh path in a short temp dir (unix socket
    paths are limited to 107 bytes); ``NotifyListener(abstract=True)`` binds an
    abstract name; ``NotifyListener(path=...)`` binds that path. Pass
    ``listener.address`` as ``NOTIFY_SOCKET`` to the process under test.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, abstract: bool = False) -> None:
        self._tmpdir: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        if abstract:
            name = f"ml-supervisor-notify-{os.getpid()}-{id(self):x}-{time.monotonic_ns()}"
            self._sock.bind("\0" + name)
            self.address = "@" + name
            self._path: Path | None = None
        else:
            if path is None:
                self._tmpdir = tempfile.mkdtemp(prefix="sdn-", dir="/tmp" if os.path.isdir("/tmp") else None)
                path = os.path.join(self._tmpdir, "notify")
            self._path = Path(path)
            self._sock.bind(str(self._path))
            self.address = str(self._path)
        self.messages: list[dict[str, str]] = []  # every datagram received, parsed, in order

    def receive(self, timeout_s: float) -> dict[str, str] | None:
        """The next datagram as ``{KEY: VALUE}`` (also appended to ``messages``), None on timeout."""
        self._sock.settimeout(max(0.0, timeout_s))
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return None
        message = parse_notify_message(data)
        self.messages.append(message)
        return message

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 10.0) -> dict[str, str]:
        """Receive until a message has ``key`` (equal to ``value`` when given); raise TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key}{'=' + value if value is not None else ''} within {timeout_s:g}s; "
                                   f"got {self.messages}")
            message = self.receive(left)
            if message is not None and key in message and (value is None or message[key] == value):
                return message

    def drain(self, duration_s: float) -> list[dict[str, str]]:
        """Every message received during the next ``duration_s`` seconds."""
        got = []
        deadline = time.monotonic() + duration_s
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                got.append(message)
        return got

    def close(self) -> None:
        """Close the socket and remove its path."""
        self._sock.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
        if self._tmpdir is not None:
            os.rmdir(self._tmpdir)
            self._tmpdir = None

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_notify_message(data: bytes) -> dict[str, str]:
    """``b"READY=1\\nSTATUS=x"`` -> ``{"READY": "1", "STATUS": "x"}`` (lines without '=' are skipped)."""
    out = {}
    for line in data.decode("utf-8", errors="replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out

