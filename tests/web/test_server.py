"""The uvicorn thread: port 0 gives a real port, a busy port is one clear error, stop frees the port."""

from __future__ import annotations

import socket

import httpx
import pytest
from fastapi import FastAPI

from supervisor.errors import SupervisorError
from supervisor.web.server import WebServer


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    return app


def test_serves_on_a_free_port_and_releases_it_on_stop() -> None:
    server = WebServer(_app(), "127.0.0.1", 0)
    server.start()
    try:
        assert server.port and server.url == f"http://127.0.0.1:{server.port}/"
        assert server.url_with_token("tok") == f"http://127.0.0.1:{server.port}/#token=tok"
        assert httpx.get(server.url + "hello").json() == {"hello": "world"}
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{server.port}/hello", timeout=2)
    # the port can be bound again at once
    again = WebServer(_app(), "127.0.0.1", server.port)
    again.start()
    again.stop()
    again.stop()  # idempotent


def test_a_busy_port_is_one_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        server = WebServer(_app(), "127.0.0.1", port)
        with pytest.raises(SupervisorError, match=rf"web: cannot listen on 127.0.0.1:{port}: Address already in use"):
            server.start()


def test_url_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = WebServer(_app()).url
