"""The uvicorn thread: port 0 gives a real port, `auto` falls back to a free port when 8742 is taken,
a busy explicit port is one clear error, stop frees the port."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from fastapi import FastAPI

from supervisor.errors import SupervisorError
from supervisor.web import server as web_server
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_auto_takes_the_preferred_port_when_it_is_free(monkeypatch: pytest.MonkeyPatch) -> None:
    # A free port stands in for 8742, which another daemon on this machine may hold right now.
    preferred = _free_port()
    monkeypatch.setattr(web_server, "PREFERRED_PORT", preferred)
    server = WebServer(_app(), "127.0.0.1", "auto")
    server.start()
    try:
        assert server.port == preferred
        assert httpx.get(server.url + "hello").json() == {"hello": "world"}
    finally:
        server.stop()


def test_auto_serves_on_another_port_when_the_preferred_one_is_taken(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        monkeypatch.setattr(web_server, "PREFERRED_PORT", taken)
        server = WebServer(_app(), "127.0.0.1", "auto")
        with caplog.at_level(logging.WARNING, logger="ml_supervisor.web"):
            server.start()
        try:
            assert server.port not in (None, taken)
            assert httpx.get(server.url + "hello").json() == {"hello": "world"}
        finally:
            server.stop()
    said = [r.getMessage() for r in caplog.records]
    assert any(f"port {taken} on 127.0.0.1 is taken" in m and f"serving on port {server.port} instead" in m
               for m in said), said
