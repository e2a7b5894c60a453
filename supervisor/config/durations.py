"""Human durations: ``30s``, ``90m``, ``24h``, ``1h30m``, ``2d``, or plain seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: str | int | float) -> float:
    """Return the number of seconds in ``value``.

    Raises ``ValueError`` with a short reason for anything that is not a
    non-negative duration; callers add the file and key.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 30s, 90m or 24h, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if not text:
            raise ValueError("expected a duration like 30s, 90m or 24h, got an empty string")
        try:
            seconds = float(text)
        except ValueError:
            pos = 0
            seconds = 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or pos == 0:
                raise ValueError(f"expected a duration like 30s, 90m or 24h, got {value!r}") from None
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"expected a non-negative duration, got {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """A short human form of ``seconds`` (``1h02m``, ``45s``) for tables and alerts."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
