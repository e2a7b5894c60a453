"""Numbers read from files a trainer writes, checked before the daemon uses them.

A trainer is the user's code: its files may hold ``Infinity``, ``1e400`` or an
integer with a hundred digits. Python's ``int(float("inf"))`` raises
``OverflowError``, SQLite refuses integers past 2**63, ``os.kill`` refuses pids
past a C int, and an infinite time would stop the hang clock for ever. Readers
pass every number through these helpers and treat ``None`` (or ``ValueError``)
as "unreadable", never as a crash.
"""

from __future__ import annotations

import math
from typing import Any

MAX_COUNT = 2**53  # steps, epochs, attempts, sizes: exact in a float, far below SQLite's 2**63
MAX_PID = 2**22  # the kernel's largest pid_max
MAX_TIME = 2**40  # unix seconds: about the year 36812; more is not a time


def finite_float(value: Any, *, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]``; ``ValueError`` otherwise (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a number: {value!r}"[:100])
    try:
        number = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"not a number: {value!r}"[:100]) from None
    if not math.isfinite(number) or not low <= number <= high:
        raise ValueError(f"out of range: {value!r}"[:100])
    return number


def bounded_int(value: Any, *, low: int = 0, high: int = MAX_COUNT) -> int:
    """``value`` as an integer in ``[low, high]`` (a whole float like ``3.0`` counts); ``ValueError`` otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        as_float = finite_float(value)
        if not as_float.is_integer():
            raise ValueError(f"not a whole number: {value!r}"[:100])
        number = int(as_float)
    if not low <= number <= high:
        raise ValueError(f"out of range: {value!r}"[:100])
    return number


def clamped_count(value: Any) -> int:
    """A step or epoch count: clamped into ``[0, MAX_COUNT]`` (infinity too); 0 when it is not a number at all."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return min(max(value, 0), MAX_COUNT)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    if number != number:  # NaN
        return 0
    return int(min(max(number, 0.0), float(MAX_COUNT)))


def unix_time(value: Any) -> float:
    """A wall-clock time in unix seconds, finite and in ``[0, MAX_TIME]``; ``ValueError`` otherwise."""
    return finite_float(value, low=0.0, high=float(MAX_TIME))


def optional_duration(value: Any) -> float | None:
    """A duration in seconds (a step time) or ``None``: finite and at least 0; ``ValueError`` otherwise."""
    return None if value is None else finite_float(value, low=0.0)
