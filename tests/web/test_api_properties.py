"""Property tests of the two transports, through a real supervisor: the Unix socket (any JSON request) and the
HTTP API (any method, route, query, headers and body, with and without the token).

No input yields a 500, an ``internal`` error, a hang or a change to an existing job. Bounded (``max_examples``)
so each takes seconds.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from supervisor.api.ops import Operations
from supervisor.api.server import ApiServer
from tests.web.conftest import TOKEN, WebEnv

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30)),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children,
                                                                               max_size=4)),
    max_leaves=15,
)
OPS = st.sampled_from(["ping", "status", "list", "history", "events", "logs", "stop", "restart", "gpus",
                       "gpus_clear", "submit", "nope", "__init__", "dispatch", ""])
ARG_NAMES = st.sampled_from(["job", "after", "limit", "attempt", "offsets", "all", "index", "config_path", "cwd",
                             "config_text", "overrides", "name", "x"])


@pytest.fixture
def web_with_a_job(web: WebEnv) -> Iterator[tuple[WebEnv, dict[str, Any]]]:
    """The web env with one finished job whose status must never change."""
    job = web.client.post("/api/launch", json={"template": "fake", "values": {}}).json()
    finished = web.wait_state(job["id"], "completed")
    yield web, finished


def unchanged(web: WebEnv, before: dict[str, Any]) -> None:
    after = web.ops.op_status(before["id"])
    for key in ("state", "restarts", "attempts", "end_reason", "checkpoints"):
        assert after[key] == before[key], key


# -- the Unix socket -------------------------------------------------------------------------------
@pytest.fixture
def socket_api(web_with_a_job: tuple[WebEnv, dict[str, Any]]) -> Iterator[tuple[ApiServer, WebEnv, dict[str, Any]]]:
    web, job = web_with_a_job
    server = ApiServer(Operations(web.sup), web.sup.state_dir)
    server.start()
    yield server, web, job
    server.stop()


def ask(server: ApiServer, payload: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(server.path))
        sock.sendall(payload)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the server closed without an answer"
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


@SETTINGS
@given(op=st.one_of(OPS, JSON), args=st.one_of(st.dictionaries(ARG_NAMES, JSON, max_size=4), JSON),
       raw=st.one_of(st.none(), st.binary(max_size=200)))
def test_any_socket_request_gets_an_answer_never_an_internal_error(
        socket_api: tuple[ApiServer, WebEnv, dict[str, Any]], op: Any, args: Any, raw: bytes | None) -> None:
    server, web, job = socket_api
    if isinstance(args, dict) and "job" in args and isinstance(args["job"], str) and op in ("stop", "restart"):
        args["job"] = args["job"] + "-not-a-job"  # never aim a valid stop at the job under watch
    payload = raw + b"\n" if raw is not None else json.dumps({"op": op, "args": args}).encode() + b"\n"
    reply = ask(server, payload)
    assert isinstance(reply.get("ok"), bool)
    if not reply["ok"]:
        assert reply["error"]["code"] != "internal", reply
        assert "\n" not in reply["error"]["message"]
    unchanged(web, job)


# -- the HTTP API ----------------------------------------------------------------------------------
def routes(web: WebEnv) -> list[tuple[str, str]]:
    found = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/nope"), ("DELETE", "/api/jobs")]
    for route in web.server.app.routes:
        if isinstance(route, APIRoute):
            found.extend((method, route.path) for method in sorted(route.methods))
    return found


QUERY_VALUES = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str),
                         st.sampled_from(["1e400", "NaN", "-0", "", "true", "0x10", "9" * 40]), st.text(max_size=10))
HEADERS = st.dictionaries(
    st.sampled_from(["Content-Type", "Authorization", "X-Auth-Token", "Accept", "X-Other"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip), max_size=3)
BODIES = st.one_of(st.none(), st.binary(max_size=300),
                   JSON.map(lambda value: json.dumps(value).encode()),
                   st.fixed_dictionaries({"template": st.one_of(st.just("fake"), st.text(max_size=70)),
                                          "values": st.dictionaries(st.text(max_size=40), JSON, max_size=3),
                                          "name": st.one_of(st.none(), st.text(max_size=70))},
                                         optional={"extra": JSON}).map(lambda value: json.dumps(value).encode()))


@SETTINGS
@given(data=st.data(), with_token=st.booleans(), query=st.dictionaries(
    st.sampled_from(["after", "limit", "attempt", "offset", "stdout", "stderr", "tail", "x"]), QUERY_VALUES,
    max_size=3), headers=HEADERS, body=BODIES)
def test_any_http_request_is_answered_without_a_500(web_with_a_job: tuple[WebEnv, dict[str, Any]],
                                                    data: st.DataObject, with_token: bool, query: dict[str, str],
                                                    headers: dict[str, str], body: bytes | None) -> None:
    web, job = web_with_a_job
    method, path = data.draw(st.sampled_from(routes(web)))
    job_param = data.draw(st.one_of(st.just(job["id"]), st.text(
        alphabet=st.characters(min_codepoint=48, max_codepoint=122), min_size=1, max_size=20)))
    if method == "POST" and job_param == job["id"]:
        job_param += "-other"  # a valid stop or restart of the watched job would be a legitimate change
    url = re.sub(r"\{[^}]+\}", lambda _: quote(job_param, safe=""), path)
    if with_token:
        headers["Authorization"] = f"Bearer {TOKEN}"
    client = web.anon
    answer = client.request(method, url, params=query, headers=headers, content=body)
    assert answer.status_code < 500, (method, url, answer.status_code, answer.text[:300])
    if answer.headers.get("content-type", "").startswith("application/json") and answer.status_code >= 400:
        assert "error" in answer.json()
    unchanged(web, job)
