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
MAX_REQUEST = 4 * 1024 * 1024  # a config text (at most 1 MiB, see safe_yaml) and its JSON escaping
# A client that connects and says nothing, or trickles its request, holds a thread and a file
# descriptor of the daemon: both are bounded. `logs -f` and `events -f` poll with new connections.
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
_BUSY = b'{"ok": false, "error": {"code": "busy", "message": "too many connections to the daemon; try again"}}\n'


def socket_path(state_dir: Path) -> Path:
    return state_dir / "supervisor.sock"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_S  # applied to the socket: a read or write that waits longer fails

    def handle(self) -> None:
        try:
            line = self.rfile.readline(MAX_REQUEST + 1)
        except OSError:  # the timeout, or the client went away
            return
        if len(line) > MAX_REQUEST:
            self._reply({"ok": False, "error": {"code": "bad_request", "message": "request too large"}})
            return
        try:
            request = json.loads(line)
            op, args = request["op"], request.get("args") or {}
            if not isinstance(op, str) or not isinstance(args, dict):
                raise TypeError("op must be text and args a mapping")
        except (ValueError, KeyError, TypeError, RecursionError):
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
        except OSError:  # gone, or not reading within the timeout
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    ops: Operations

    def __init__(self, path: str, handler: type[socketserver.BaseRequestHandler]) -> None:
        super().__init__(path, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most ``MAX_CONNECTIONS`` at once; the rest are told so and closed."""
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started: it would never release its slot
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("API connection failed")  # to the daemon's log, not a bare traceback on stderr


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
