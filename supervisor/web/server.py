"""Run the web app with uvicorn in a background thread of the daemon.

The listening socket is bound here, in the caller's thread, before uvicorn
starts: a port already in use becomes one clear ``SupervisorError`` at daemon
start (uvicorn itself would call ``sys.exit`` inside its thread), and port 0
gives the real port at once.

Port ``auto`` (the default) takes 8742 when it is free, else any free port:
two users' daemons on one machine each get a page. A port set explicitly that
is taken stays an error (someone expects the page there).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from supervisor.errors import SupervisorError
from supervisor.web.limits import IDLE_TIMEOUT_S, MAX_CONNECTIONS, guarded_protocol
from supervisor.web.token import page_url

log = logging.getLogger("ml_supervisor.web")
AUTO_PORT = "auto"
PREFERRED_PORT = 8742  # what web.port=auto tries first
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0


class WebServer:
    """``start()`` serves ``app`` on ``host:port`` from a thread; ``stop()`` ends it.

    Port 0 picks a free port; ``"auto"`` takes 8742 when free, else a free port.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | str = AUTO_PORT, *,
                 idle_timeout_s: float = IDLE_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS) -> None:
        self.app = app
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._socket: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (without the token), e.g. ``http://127.0.0.1:8742/``."""
        if self.port is None:
            raise RuntimeError("the web server is not started")
        return page_url(self.host, self.port)

    def url_with_token(self, token: str) -> str:
        """The address to open: the token rides in the fragment, which never reaches the server or its logs."""
        if self.port is None:
            raise RuntimeError("the web server is not started")
        return page_url(self.host, self.port, token)

    def start(self) -> None:
        """Bind, then serve in a thread; returns once requests are answered. Raises ``SupervisorError``."""
        self._socket = _bind(self.host, self.requested_port)
        self.port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self.app, log_config=None,  # keep the daemon's logging as it is
            log_level="warning", access_log=False,  # no request lines: the daemon log is for jobs
            lifespan="off", timeout_graceful_shutdown=2, server_header=False,
            # connection cap and idle deadline (see limits.py); 503 past the cap of requests in flight
            http=guarded_protocol(idle_timeout_s=self.idle_timeout_s, max_connections=self.max_connections),
            limit_concurrency=self.max_connections + 1, h11_max_incomplete_event_size=16 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise SupervisorError(f"the web server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        log.info("web page at %s", self.url)

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # uvicorn may sys.exit; the daemon must live on without its page
            log.exception("the web server stopped unexpectedly")

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=STOP_TIMEOUT)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout=STOP_TIMEOUT)
        if self._socket is not None:
            self._socket.close()
        self._thread = None
        self._server = None
        self._socket = None


def _bind(host: str, port: int | str) -> socket.socket:
    """The listening socket for ``port`` (a number, or ``auto``); raises ``SupervisorError``."""
    if port == AUTO_PORT:
        try:
            return _listen(host, PREFERRED_PORT)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise _cannot_listen(host, PREFERRED_PORT, exc) from None
        try:
            sock = _listen(host, 0)
        except OSError as exc:
            raise _cannot_listen(host, 0, exc) from None
        log.warning("web: port %d on %s is taken (another daemon?); serving on port %d instead "
                    "(`supervisorctl web-url` prints the address)", PREFERRED_PORT, host, sock.getsockname()[1])
        return sock
    try:
        return _listen(host, int(port))
    except OSError as exc:
        raise _cannot_listen(host, port, exc) from None


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # "::" serves IPv4 too
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def _cannot_listen(host: str, port: int | str, exc: OSError) -> SupervisorError:
    return SupervisorError(f"web: cannot listen on {host}:{port}: {exc.strerror or exc} "
                           "(set web.port=auto, another port, or web.enabled=false)")
