"""The Unix-socket transport: one JSON request per connection, one JSON answer.

The socket lives in the state dir and is created owner-only (0600): whoever can
talk to it can start processes as the daemon's user.

    request:  {"op": "status", "args": {"job": "digits-3f9c2a"}}\\n
    answer:   {"ok": true, "result": {...}}\\n  |  {"ok": false, "error": {"code": ..., "message": ...}}\\n
"""

from __future__ import annotations

import json
import logging
import os
import socketserver
import threading
from pathlib import Path
from typing import Any

from supervisor.api.ops import Operations
from supervisor.errors import SupervisorError

log = logging.getLogger("ml_supervisor.api")
MAX_REQUEST = 16 * 1024 * 1024


def socket_path(state_dir: Path) -> Path:
    return state_dir / "supervisor.sock"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST)
        try:
            request = json.loads(line)
            op, args = str(request["op"]), dict(request.get("args") or {})
        except (ValueError, KeyError, TypeError):
            self._reply({"ok": False, "error": {"code": "bad_request", "message": "malformed request"}})
            return
        try:
            result = self.server.ops.dispatch(op, args)
            self._reply({"ok": True, "result": result})
        except SupervisorError as exc:
            self._reply({"ok": False, "error": exc.to_dict()})
        except Exception as exc:  # never let one request take the server down
            log.exception("API %s failed", op)
            self._reply({"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})

    def _reply(self, payload: dict[str, Any]) -> None:
        try:
            self.wfile.write(json.dumps(payload, default=str).encode() + b"\n")
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    ops: Operations


class ApiServer:
    """Serves ``Operations`` on ``<state_dir>/supervisor.sock`` from a background thread."""

    def __init__(self, ops: Operations, state_dir: Path) -> None:
        self.path = socket_path(state_dir)
        # We hold the state dir's lock, so a socket file left here is a dead daemon's.
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self._server.ops = ops
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
