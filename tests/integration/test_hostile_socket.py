"""The Unix socket tried as a hostile client would: a real ``ApiServer`` over a real supervisor.

Before: a silent client held a thread and a descriptor for ever, there was no cap on connections,
and a request like ``{"op": "events", "args": {"after": 1e30}}`` reached SQLite and came back as an
``internal`` error with a traceback in the daemon's log.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.api import server as api_server
from supervisor.api.arguments import MAX_INT
from supervisor.api.ops import Operations
from supervisor.api.server import ApiServer
from tests.support.harness import wait_for
from tests.web.conftest import start_supervisor, stop_supervisor


@pytest.fixture
def api(tmp_path: Path, fake_trainer_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiServer]:
    monkeypatch.setattr(api_server._Handler, "timeout", 0.5)
    monkeypatch.setattr(api_server, "MAX_CONNECTIONS", 4)
    sup = start_supervisor(tmp_path / "state", "fake_trainer")
    server = ApiServer(Operations(sup), sup.state_dir)
    server.start()
    yield server
    server.stop()
    stop_supervisor(sup)


@pytest.fixture
def fake_trainer_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.harness import REPO, SUPPORT

    monkeypatch.setenv("PYTHONPATH", f"{SUPPORT}:{REPO}")
    monkeypatch.setenv("WANDB_MODE", "offline")


def call_raw(server: ApiServer, payload: bytes, timeout: float = 5.0) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(server.path))
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


@pytest.mark.parametrize("request_line", [
    {"op": "events", "args": {"after": 10**30}},
    {"op": "events", "args": {"after": -1}},
    {"op": "events", "args": {"after": 1.5}},
    {"op": "events", "args": {"limit": "all"}},
    {"op": "status", "args": {"job": ["a", "b"]}},
    {"op": "status", "args": {}},
    {"op": "status", "args": {"job": "x", "extra": 1}},
    {"op": "logs", "args": {"job": "x", "offsets": {"stdout": 2**63}}},
    {"op": "submit", "args": {"config_path": "a\u0000b", "cwd": "/"}},
    {"op": "submit", "args": {"config_path": "/x.yaml", "cwd": "/", "overrides": "a=1"}},
    {"op": "gpus_clear", "args": {"index": True}},
    {"op": 5, "args": {}},
    {"op": "ping", "args": [1, 2]},
    {"op": "x" * 10000},
], ids=repr)
def test_malformed_arguments_are_a_one_line_bad_request(api: ApiServer, request_line: dict[str, Any]) -> None:
    reply = call_raw(api, json.dumps(request_line).encode() + b"\n")
    assert reply["ok"] is False
    assert reply["error"]["code"] in ("bad_request", "error", "config_invalid", "not_found"), reply
    assert len(reply["error"]["message"]) < 500 and "\n" not in reply["error"]["message"]


def test_deeply_nested_json_is_a_bad_request(api: ApiServer) -> None:
    reply = call_raw(api, b"[" * 200_000 + b"]" * 200_000 + b"\n")
    assert reply == {"ok": False, "error": {"code": "bad_request", "message": "malformed request"}}


def test_a_large_but_valid_integer_is_accepted(api: ApiServer) -> None:
    reply = call_raw(api, json.dumps({"op": "events", "args": {"after": MAX_INT}}).encode() + b"\n")
    assert reply == {"ok": True, "result": []}


def test_a_silent_client_is_disconnected(api: ApiServer) -> None:
    """Before: held for ever (here the recv would time out). The server's deadline is 0.5 s; the wait is long."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(str(api.path))
        sock.sendall(b'{"op": "pi')  # and never the rest
        assert sock.recv(1024) == b""


def test_connections_past_the_cap_are_told_busy_and_the_server_recovers(api: ApiServer,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The held connections must keep their slots until the fifth is answered, however slow the box:
    # a silent connection's deadline far past the test (the server accepts in the order of connecting).
    monkeypatch.setattr(api_server._Handler, "timeout", 600)
    held = []
    try:
        for _ in range(4):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(api.path))
            held.append(sock)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as extra:
            extra.settimeout(60)  # without the cap it is served, and waits for a request: this times out
            extra.connect(str(api.path))
            busy = json.loads(extra.recv(65536))  # answered (and closed) before it says anything
        assert busy["ok"] is False and busy["error"]["code"] == "busy"
    finally:
        for sock in held:
            sock.close()  # their handlers see the end of input and free their slots

    def ping() -> bool:
        return call_raw(api, b'{"op": "ping"}\n', timeout=30).get("ok") is True

    wait_for(ping, timeout=60, interval=0.1, what="a ping answered once the held connections closed")
