"""What bounds the web server's cost to a client, with or without the token.

The daemon supervises runs that take days; its web port is reachable by anyone
on the host (or further, with ``web.host``). Two layers:

- ``RequestGate`` (ASGI middleware, outermost in the app): the token is checked
  from the headers *before* any byte of the body is read, so an anonymous
  client never costs more than its headers (a refused body is drained, never
  kept, at most ``MAX_BODY`` bytes, so the 401 reaches the client); a body is read to at most
  ``MAX_BODY`` bytes (413 past that) within ``BODY_TIMEOUT_S`` (408), and only
  then handed to the app.
- ``guarded_protocol`` (uvicorn's HTTP protocol, per connection): at most
  ``MAX_CONNECTIONS`` open connections (the rest are closed at once: they share
  the daemon's file-descriptor limit with its jobs), and a connection that has
  no request in progress ``IDLE_TIMEOUT_S`` after it opened or after its last
  answer is closed, however slowly it trickles a request line in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_BODY = 64 * 1024  # a launch request is a few hundred bytes
BODY_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def needs_token(path: str) -> bool:
    """Whether a request path is one of the token's (the API and the metrics; not the page's shell)."""
    return path == "/metrics" or path == "/api" or path.startswith("/api/")


class RequestGate:
    """ASGI middleware: token first, then a bounded body (see the module docstring).

    ``authorized(headers)`` gets the request's headers (lower-case names) and says
    whether they carry the token. ``unauthorized`` is the 401 body to send.
    """

    def __init__(self, app: ASGIApp, *, authorized: Callable[[dict[str, str]], bool], unauthorized: dict[str, Any],
                 extra_headers: dict[str, str] | None = None, max_body: int = MAX_BODY,
                 body_timeout_s: float = BODY_TIMEOUT_S) -> None:
        self.app = app
        self.authorized = authorized
        self.unauthorized = unauthorized
        self.extra_headers = extra_headers or {}
        self.max_body = max_body
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "").strip()
        too_large = declared.isdigit() and int(declared) > self.max_body
        if needs_token(str(scope.get("path", ""))) and not self.authorized(headers):
            if not too_large:
                # Decided from the headers alone; a small body is drained (discarded, never kept), or closing
                # with it unread would reset the connection and the client would never see its 401.
                await self._drain(receive)
            await self._answer(send, 401, self.unauthorized, {"WWW-Authenticate": "Bearer"})
            return
        if too_large:
            await self._answer(send, 413, _error("too_large", f"the body is over {self.max_body} bytes"))
            return
        try:
            body = await asyncio.wait_for(self._read_body(receive), self.body_timeout_s)
        except _TooLarge:
            await self._answer(send, 413, _error("too_large", f"the body is over {self.max_body} bytes"))
            return
        except TimeoutError:
            await self._answer(send, 408, _error("timeout", "the body did not arrive in time"))
            return
        if body is None:
            return  # the client went away
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: only http.disconnect is left to come

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive) -> None:
        """Read and drop a refused request's body: at most ``max_body`` bytes, within the body timeout."""

        async def drop() -> None:
            size = 0
            while size <= self.max_body:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
                size += len(message.get("body", b""))

        try:
            await asyncio.wait_for(drop(), self.body_timeout_s)
        except TimeoutError:
            pass

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _answer(self, send: Send, status: int, payload: dict[str, Any],
                      headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        all_headers = {**self.extra_headers, **(headers or {}), "content-type": "application/json",
                       "content-length": str(len(body)), "connection": "close"}
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def guarded_protocol(*, idle_timeout_s: float = IDLE_TIMEOUT_S,
                     max_connections: int = MAX_CONNECTIONS) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a connection cap and an idle deadline (see the module docstring).

    uvicorn closes a connection idle *between* requests after ``timeout_keep_alive``,
    but never one that has not finished its first request line: that is the gap.
    """

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()  # connection_lost cleans up as for any closed connection
                return
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(idle_timeout_s, self._on_deadline)

        def _on_deadline(self) -> None:
            self._deadline = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being answered: its answer re-arms the deadline
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol
