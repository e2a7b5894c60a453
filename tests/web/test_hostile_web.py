"""The web port tried as an attacker would, with a valid token and without: through a real HTTP server
over a real supervisor. Each test failed before its fix (noted per test)."""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from supervisor.web.app import create_app
from supervisor.web.limits import BODY_TIMEOUT_S, MAX_BODY
from supervisor.web.server import WebServer
from tests.support.harness import wait_for
from tests.web.conftest import TOKEN, WebEnv, fake_template


def raw_request(web: WebEnv, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``request`` as is on a fresh connection; the bytes answered until the server closes or ``timeout``."""
    assert web.server.port is not None
    with socket.create_connection(("127.0.0.1", web.server.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"content-length: 0" not in b"".join(chunks).lower():
                head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    break
        return b"".join(chunks)


# -- item 1: a name from the page is a literal -----------------------------------------------------
@pytest.mark.parametrize("name", ["${oc.env:ML_SUPERVISOR_TEST_SECRET}", "${${oc.env:ML_SUPERVISOR_TEST_SECRET}}"])
def test_a_launch_name_is_never_resolved(web: WebEnv, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the first made the daemon's environment the job's name (201), the second echoed it in the error."""
    monkeypatch.setenv("ML_SUPERVISOR_TEST_SECRET", "hunter2-secret")
    answer = web.client.post("/api/launch", json={"template": "fake", "values": {}, "name": name})
    assert answer.status_code == 422, answer.text
    assert "hunter2" not in answer.text
    assert set(answer.json()["error"]["fields"]) == {"name"}
    assert web.ops.op_list() == []


def test_a_knob_value_cannot_carry_an_interpolation(web: WebEnv) -> None:
    answer = web.client.post("/api/launch", json={"template": "fake",
                                                  "values": {"checkpoint.filename": "${oc.env:HOME}"}})
    assert answer.status_code == 422 and web.ops.op_list() == []


# -- item 2: free-text knobs never reach str.format unchecked --------------------------------------
@pytest.mark.parametrize("pattern", ["{epoch].__repr__.__globals__[os].environ[HOME}", "{epoch:099999999999}"])
def test_a_filename_knob_that_reaches_into_objects_is_refused(web: WebEnv, pattern: str) -> None:
    answer = web.client.post("/api/launch", json={"template": "fake", "values": {"checkpoint.filename": pattern}})
    assert answer.status_code == 422, answer.text
    assert set(answer.json()["error"]["fields"]) == {"checkpoint.filename"}
    assert web.ops.op_list() == []


# -- item 6: the token before the body, and a cap on the body --------------------------------------
def test_an_unauthenticated_huge_post_is_refused_before_its_body_is_read(web: WebEnv) -> None:
    """Before: the server waited for (and buffered) all 64 MiB, then answered 401."""
    head = (b"POST /api/launch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 67108864\r\n\r\n")
    # Waiting for the body, the server would answer nothing before its body timeout (then 408, not 401).
    answer = raw_request(web, head + b"{", timeout=BODY_TIMEOUT_S - 1)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_malformed_body_without_the_token_is_401_not_400(web: WebEnv) -> None:
    answer = web.anon.post("/api/launch", content=b"{not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized"
    assert answer.headers["x-frame-options"] == "DENY"


def test_a_body_over_the_cap_is_413_with_the_token(web: WebEnv) -> None:
    big = b'{"template": "fake", "values": {}, "name": "' + b"x" * (MAX_BODY + 10) + b'"}'
    answer = web.client.post("/api/launch", content=big, headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: chunked, counted as it arrives
        for _ in range(MAX_BODY // 1024 + 5):
            yield b" " * 1024

    answer = web.client.post("/api/launch", content=chunks(), headers={"Content-Type": "application/json"})
    assert answer.status_code == 413
    assert web.ops.op_list() == []
    assert web.client.get("/api/ping").status_code == 200  # and the server is fine


# -- item 9: query integers ------------------------------------------------------------------------
@pytest.mark.parametrize("query", [
    "/api/events?after=99999999999999999999999", "/api/events?after=-1", "/api/events?limit=1e400",
    "/api/jobs/x/logs?stdout=9223372036854775808", "/api/jobs/x/metrics?offset=18446744073709551616",
    "/api/jobs/x/logs?attempt=99999999999999999999",
])
def test_query_integers_past_what_sqlite_and_seek_take_are_400(web: WebEnv, query: str) -> None:
    answer = web.client.get(query)
    assert answer.status_code == 400, answer.text


def test_a_log_offset_past_the_end_of_a_real_job_is_fine(web: WebEnv) -> None:
    job = web.client.post("/api/launch", json={"template": "fake", "values": {}}).json()
    web.wait_state(job["id"], "completed")
    answer = web.client.get(f"/api/jobs/{job['id']}/logs", params={"stdout": 2**53, "stderr": 2**53})
    assert answer.status_code == 200 and answer.json()["stdout"] == ""
    answer = web.client.get(f"/api/jobs/{job['id']}/metrics", params={"attempt": 1, "offset": 2**53})
    assert answer.status_code == 200


# -- item 8: one bad template never hides the others -----------------------------------------------
def test_a_bomb_or_deep_template_is_listed_as_broken_and_the_others_still_show(web: WebEnv) -> None:
    """Before: the deep one raised RecursionError and /api/templates answered 500 for every template."""
    (web.templates / "deep.yaml").write_text("ui: {title: deep}\nname: deep\nx: " + "[" * 50_000 + "]" * 50_000)
    bomb = "\n".join(["name: bomb", "ui: {title: bomb}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
                     + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)])
    (web.templates / "bomb.yaml").write_text(bomb)
    started = time.monotonic()
    answer = web.client.get("/api/templates")
    assert answer.status_code == 200
    assert time.monotonic() - started < 60  # expanded, the bomb would be 9**9 items: never within a minute
    names = [t["name"] for t in answer.json()]
    assert "fake" in names


# -- item 7: idle connections and a connection cap --------------------------------------------------
@pytest.fixture
def small_server(make_web: Callable[..., WebEnv]) -> WebServer:
    """A second server over the same app with a short idle deadline and a cap of 4 connections."""
    web = make_web()
    server = WebServer(create_app(web.ops, token=TOKEN, templates_dir=web.templates), "127.0.0.1", 0,
                       idle_timeout_s=0.5, max_connections=4)
    server.start()
    yield server
    server.stop()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (what it still sends before that is dropped)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
        return False
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_a_connection_that_never_sends_a_request_is_closed(small_server: WebServer) -> None:
    """Before: it stayed open for ever, holding one of the daemon's file descriptors."""
    assert small_server.port is not None
    with socket.create_connection(("127.0.0.1", small_server.port)) as silent, \
         socket.create_connection(("127.0.0.1", small_server.port)) as trickle:
        trickle.sendall(b"GET /api/pi")  # a request line that never ends
        assert closed_within(silent, 5) and closed_within(trickle, 5)


@pytest.fixture
def capped_server(make_web: Callable[..., WebEnv]) -> Iterator[WebServer]:
    """A server with a cap of 4 connections and an idle deadline far past any wait of the test below: a
    socket it closes within the test was closed by the cap, never by the idle deadline."""
    web = make_web()
    server = WebServer(create_app(web.ops, token=TOKEN, templates_dir=web.templates), "127.0.0.1", 0,
                       idle_timeout_s=600.0, max_connections=4)
    server.start()
    yield server
    server.stop()


def closed_now(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (EOF or reset waiting), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def ping_on(sock: socket.socket) -> bytes:
    """Send one authenticated ping on an open connection; the answer's bytes (headers and body)."""
    sock.sendall(b"GET /api/ping HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + TOKEN.encode() + b"\r\n\r\n")
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_connections_past_the_cap_are_closed_and_the_server_recovers(capped_server: WebServer) -> None:
    """Before (the cap removed): no socket is closed within the wait (the idle deadline is 10 minutes),
    and ``closed`` stays 0; the Unix-socket API's version of this is test_hostile_socket's "busy" reply."""
    assert capped_server.port is not None
    held = [socket.create_connection(("127.0.0.1", capped_server.port)) for _ in range(10)]
    try:
        closed: set[int] = set()

        def six_closed() -> bool:
            closed.update(i for i, sock in enumerate(held) if i not in closed and closed_now(sock))
            return len(closed) >= 6

        wait_for(six_closed, timeout=30, interval=0.05, what="the 6 connections past the cap to be closed")
        time.sleep(0.2)  # a seventh closed would be a cap that closes too much: look once more
        six_closed()
        assert len(closed) == 6, f"closed {sorted(closed)}: the cap is 4 of 10"
        for i, sock in enumerate(held):  # the four within the cap are served
            if i not in closed:
                assert ping_on(sock).startswith(b"HTTP/1.1 200"), i
    finally:
        for sock in held:
            sock.close()

    def served() -> bool:  # the closed ones' slots come back (the server notices the closes as it can)
        try:
            answer = httpx.get(f"{capped_server.url}api/ping", headers={"X-Auth-Token": TOKEN}, timeout=5)
            return answer.status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(served, timeout=30, interval=0.2, what="the server to answer after the held connections closed")


def test_a_keep_alive_client_still_works_across_requests(small_server: WebServer) -> None:
    with httpx.Client(base_url=small_server.url, headers={"X-Auth-Token": TOKEN}, timeout=30) as client:
        for _ in range(5):
            assert client.get("/api/ping").status_code == 200
        # Idle past the deadline. A connection answered after the client's last one is closed (the deadline
        # runs from each answer): once it is, so is the client's, and the next request reconnects.
        assert small_server.port is not None
        with socket.create_connection(("127.0.0.1", small_server.port)) as later:
            assert ping_on(later).startswith(b"HTTP/1.1 200")
            assert closed_within(later, 30)
        assert client.get("/api/ping").status_code == 200


# -- item 3: the token never goes to the log --------------------------------------------------------
def test_the_daemon_logs_the_page_address_without_the_token(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            fake_trainer_env: None) -> None:
    """Before: `web page: http://...#token=...` at INFO, in journals other users can read."""
    from supervisor.daemon import Daemon
    from supervisor.settings import load_settings
    from supervisor.web.token import read_token, read_web_url

    state = tmp_path / "state"
    daemon = Daemon(load_settings(None, ["web.port=0", f"web.templates_dir={tmp_path}"], state_dir=str(state)))
    caplog.set_level(logging.DEBUG)
    daemon.start()
    try:
        token = read_token(state)
        assert token and daemon.web is not None and daemon.web.url in caplog.text
        assert token not in caplog.text
        assert read_web_url(state).endswith(f"#token={token}")  # `supervisorctl web-url` still has it
    finally:
        daemon.stop()


def test_the_fake_template_is_launchable(web: WebEnv) -> None:
    """The fixtures above rely on the fake template accepting a plain launch."""
    assert fake_template()["ui"]["knobs"]
    answer = web.client.post("/api/launch", json={"template": "fake", "values": {}})
    assert answer.status_code == 201, answer.text
    web.wait_state(answer.json()["id"], "completed")
