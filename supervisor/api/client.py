"""The client side of the Unix-socket API (``supervisorctl``, the foreground run)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from supervisor.api.server import socket_path
from supervisor.errors import ERRORS_BY_CODE, DaemonUnavailable, SupervisorError


class Client:
    """Calls operations on the daemon that owns ``state_dir``."""

    def __init__(self, state_dir: Path, timeout: float = 600.0) -> None:
        self.state_dir = state_dir
        self.path = socket_path(state_dir)
        self.timeout = timeout

    def call(self, op: str, **args: Any) -> Any:
        """Run ``op`` and return its result; raise the daemon's error as a ``SupervisorError``."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(json.dumps({"op": op, "args": args}).encode() + b"\n")
                chunks = []
                while True:
                    chunk = sock.recv(1 << 16)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    if chunk.endswith(b"\n"):
                        break
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnavailable(
                f"no ml-supervisor daemon is running for {self.state_dir} "
                "(start it with `systemctl start ml-supervisor` or `ml-supervisor serve`)") from None
        except PermissionError:
            raise DaemonUnavailable(f"permission denied on {self.path} (the daemon runs as another user?)") from None
        except TimeoutError:
            raise DaemonUnavailable(f"the daemon did not answer {op!r} within {self.timeout:.0f}s") from None
        try:
            reply = json.loads(b"".join(chunks))
        except ValueError:
            raise DaemonUnavailable("the daemon closed the connection without an answer") from None
        if reply.get("ok"):
            return reply.get("result")
        error = reply.get("error") or {}
        cls = ERRORS_BY_CODE.get(str(error.get("code")), SupervisorError)
        exc = SupervisorError.__new__(cls)
        SupervisorError.__init__(exc, str(error.get("message", "unknown error")))
        exc.code = str(error.get("code", "error"))
        raise exc

    def available(self) -> bool:
        """Whether a daemon answers on the socket."""
        try:
            self.call("ping")
            return True
        except SupervisorError:
            return False
