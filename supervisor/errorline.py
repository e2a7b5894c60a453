"""One short line that says why a trainer raised, for alerts, the attempts table and the job page.

The exit record holds the exception's type, message and the tail of its
traceback. ``Type: message`` alone says nothing when the message is empty or
starts on another line (``AssertionError:``), so the line falls back on the
traceback: where the exception was raised (``file:line``) and the source line
there (for an ``assert``, the failing expression). Short enough for a phone
notification.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath

MAX_CHARS = 160
"""A phone shows about two lines of a notification."""

_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+)(?:, in .*)?$')
_MARKERS = re.compile(r"^[\s^~]*$")  # the ^^^^ / ~~~~ lines under a source line (Python 3.11+)


def raised_at(traceback_text: str) -> tuple[str, int, str] | None:
    """``(file name, line, source line)`` of the innermost frame of the last exception in a traceback.

    A chained traceback ("The above exception was the direct cause ...") lists the
    exception that was finally raised last, so its innermost frame is the last
    ``File`` line. The source line is empty when Python could not show it.
    """
    lines = traceback_text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _FRAME.match(lines[i])
        if match is None:
            continue
        source = ""
        if i + 1 < len(lines) and lines[i + 1].startswith("    ") and not _FRAME.match(lines[i + 1]) \
                and not _MARKERS.match(lines[i + 1]):
            source = lines[i + 1].strip()
        return PurePath(match["file"]).name, int(match["line"]), source
    return None


def first_meaningful_line(message: str) -> str:
    """The first non-blank line of an exception message (``''`` when it has none)."""
    for line in message.splitlines():
        if line.strip():
            return line.strip()
    return ""


def exception_line(exception: Mapping[str, str], max_chars: int = MAX_CHARS) -> str:
    """``RuntimeError: CUDA out of memory``, or with the place it was raised when the message says too little.

    ``AssertionError at model.py:42: assert loss.isfinite()`` for an assert (its
    message, when it has one, follows after `` — ``), ``StopIteration at data.py:7:
    next(it)`` for an empty message. Cut to ``max_chars`` with an ellipsis.
    """
    kind = str(exception.get("type") or "Exception")
    message = first_meaningful_line(str(exception.get("message") or ""))
    where = raised_at(str(exception.get("traceback") or ""))
    if where is not None and (not message or kind == "AssertionError"):
        file_name, line, source = where
        text = f"{kind} at {file_name}:{line}" + (f": {source}" if source else "")
        if message:
            text += f" — {message}"
    else:
        text = f"{kind}: {message}" if message else kind
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"
