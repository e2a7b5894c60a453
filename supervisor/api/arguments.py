"""Check an operation's arguments against its signature before it runs.

A request on the Unix socket is any JSON: ``{"op": "events", "args": {"after":
1e30}}`` or a list where a job id belongs. Each operation's type hints say what
it takes; this module holds every argument to them (and integers to a range
SQLite and ``seek`` accept), so a malformed request gets a one-line
``bad_request`` answer instead of an exception deep inside the store.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

from supervisor.errors import SupervisorError

MAX_INT = 2**53  # offsets, ids, counts: exact in JSON numbers, far below SQLite's and seek's 2**63
MAX_ITEMS = 10_000


class BadRequest(SupervisorError):
    """A request whose arguments do not fit the operation."""

    code = "bad_request"


def check_arguments(handler: Callable[..., Any], op: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args`` checked against ``handler``'s signature and type hints; raises ``BadRequest`` naming the argument."""
    signature = inspect.signature(handler)
    hints = typing.get_type_hints(handler)
    for name in args:
        if name not in signature.parameters:
            raise BadRequest(f"{op}: unknown argument {str(name)[:60]!r}")
    checked: dict[str, Any] = {}
    for name, param in signature.parameters.items():
        if name not in args:
            if param.default is inspect.Parameter.empty:
                raise BadRequest(f"{op}: missing argument {name!r}")
            continue
        problem = _problem(hints.get(name, Any), args[name])
        if problem is not None:
            raise BadRequest(f"{op}: {name}: {problem}")
        checked[name] = args[name]
    return checked


def _problem(hint: Any, value: Any) -> str | None:
    """Why ``value`` does not fit ``hint`` (None: it fits)."""
    if hint is Any:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        problems = [_problem(option, value) for option in options if option is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be a whole number"
        return None if 0 <= value <= MAX_INT else f"must be between 0 and {MAX_INT}"
    if hint is str:
        return None if isinstance(value, str) else "must be text"
    if origin is list:
        if not isinstance(value, list):
            return "must be a list"
        if len(value) > MAX_ITEMS:
            return f"at most {MAX_ITEMS} items"
        (item_hint,) = typing.get_args(hint)
        return next((f"[{i}] {p}" for i, item in enumerate(value) if (p := _problem(item_hint, item))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return "must be a mapping"
        if len(value) > MAX_ITEMS:
            return f"at most {MAX_ITEMS} items"
        key_hint, value_hint = typing.get_args(hint)
        for key, item in value.items():
            problem = _problem(key_hint, key) or _problem(value_hint, item)
            if problem:
                return f"{str(key)[:60]}: {problem}"
        return None
    return None  # a type this table does not know: the operation checks it
