"""The Unix-socket transport: one JSON request per connection, one JSON answer.

The socket lives in the state dir and is created owner-only (0600): whoever can
talk to it can start processes as the daemon's user. In shared-server mode
(``access.group``) it is ``root:<group>`` 0660 and the state dir 0711; each
connection's caller is who the kernel says (``SO_PEERCRED``), and every
operation runs for that caller (``Operations.for_caller``).

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

from supervisor.access import Caller, group_id, peer_credentials, resolve_caller
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
            ops = self.server.ops.for_caller(self._caller())
            result = ops.dispatch(op, args)
            self._reply({"ok": True, "result": result})
        except SupervisorError as exc:
            self._reply({"ok": False, "error": exc.to_dict()})
        except Exception as exc:  # never let one request take the server down
            log.exception("API %s failed", op)
            self._reply({"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}})

    def _caller(self) -> Caller:
        """Who is at the other end, from the kernel (never from the request)."""
        _pid, uid, gid = peer_credentials(self.connection)
        return resolve_caller(uid, gid, admin_group=self.server.admin_group)

    def _reply(self, payload: dict[str, Any]) -> None:
        try:
            self.wfile.write(json.dumps(payload, default=str).encode() + b"\n")
        except OSError:  # gone, or not reading within the timeout
            pass


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    ops: Operations
    admin_group: str | None = None

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

    def __init__(self, ops: Operations, state_dir: Path, *, group: str | None = None,
                 admin_group: str | None = None) -> None:
        """``group``: members may connect (shared-server mode); ``None``: the daemon's user only."""
        self.path = socket_path(state_dir)
        # We hold the state dir's lock, so a socket file left here is a dead daemon's.
        self.path.unlink(missing_ok=True)
        old_umask = os.umask(0o177)
        try:
            self._server = _Server(str(self.path), _Handler)
        finally:
            os.umask(old_umask)
        if group is None:
            os.chmod(self.path, 0o600)
        else:
            open_to_group(self.path, state_dir, group)
        self._server.ops = ops
        self._server.admin_group = admin_group
        self._thread = threading.Thread(target=self._server.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)


def open_to_group(sock: Path, state_dir: Path, group: str) -> None:
    """Let members of ``group`` connect: the socket ``root:<group>`` 0660, the state dir traversable but not
    listable (0711), so they reach the socket and nothing else there."""
    gid = group_id(group)
    if gid is None:  # checked with the settings; the group was removed since
        raise SupervisorError(f"access.group: no group named {group!r} on this machine")
    # What a member may know the name of (the code is public) but must not read: the database (every job),
    # the web token, quarantine and sweeps. Only the socket and the job dirs' parent stay reachable; each
    # job dir then admits its owner alone (submit.hand_over).
    for entry in state_dir.iterdir():
        if entry != sock:
            os.chmod(entry, 0o711 if entry.name == "jobs" else entry.stat().st_mode & 0o700)
    os.chown(sock, os.getuid(), gid)
    os.chmod(sock, 0o660)
    os.chmod(state_dir, 0o711)
