"""The live loss / metric curve: ``attempts/<n>/metrics.jsonl`` of every attempt, read incrementally.

The trainer appends one line per heartbeat that carried metrics::

    {"time": 1.7e9, "step": 120, "epoch": 3, "metrics": {"train_loss": 0.31, "val_loss": 0.4}}

The page polls with a cursor (the attempt and byte offset it has read up to)
and gets only the new points. A line still being written (no newline yet) is
left for the next poll. Each point carries its attempt: after a resume from
the best checkpoint the steps rewind, and the page draws every attempt as its
own segment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import finite_or_none
from supervisor.jobfiles.bounds import bounded_int
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.safe_read import read_range

MAX_READ = 1024 * 1024  # per poll; the page polls again for the rest
MAX_SKIP = 64 * MAX_READ  # of one overlong line, per poll


@dataclass(frozen=True)
class Cursor:
    """How far the page has read: attempt ``attempt``'s file up to byte ``offset`` (and everything before)."""

    attempt: int = 0
    offset: int = 0


def read_points(job_dir: str | Path, attempts: list[int], cursor: Cursor, *, max_read: int = MAX_READ
                ) -> dict[str, Any]:
    """New curve points after ``cursor``, across ``attempts`` (their numbers, ascending).

    Returns ``{"points": [...], "cursor": {"attempt", "offset"}, "more": bool}``;
    ``more`` says the read stopped at ``max_read`` bytes and the page should ask again at once.
    """
    layout = JobLayout(Path(job_dir))
    points: list[dict[str, Any]] = []
    budget = max_read
    current = cursor
    more = False
    for n in sorted(a for a in attempts if a >= cursor.attempt):
        start = cursor.offset if n == cursor.attempt else 0
        try:
            # the trainer's file (safe_read: a regular file, never whole, never a wait past the deadline)
            data = read_range(layout.attempt(n).metrics, start, budget + 1, total_cap=0)
        except OSError:  # out of descriptors, or the file does not answer: the page asks again
            data = None
        if data is None:  # no metrics (yet) for this attempt
            current = Cursor(n, start)
            continue
        if len(data) > budget:
            data, more = data[:budget], True
            if b"\n" not in data:  # one absurdly long line: skip it (at most MAX_SKIP a poll) rather than stall
                current = Cursor(n, _skip_line(layout.attempt(n).metrics, start + len(data)))
                break
        complete = data[: data.rfind(b"\n") + 1]  # only whole lines; a partial one is read next time
        for line in complete.splitlines():
            point = _point(line, n)
            if point is not None:
                points.append(point)
        budget -= len(complete)
        current = Cursor(n, start + len(complete))
        if more:
            break
    return {"points": points, "cursor": {"attempt": current.attempt, "offset": current.offset}, "more": more}


def _skip_line(path: Path, start: int) -> int:
    """The offset just past the next newline after ``start``, or ``MAX_SKIP`` bytes further when there is none
    so far (a 50 GB file of zeros is skipped a bounded piece per poll); ``start`` at the end of the file."""
    position = start
    while position - start < MAX_SKIP:
        try:
            chunk = read_range(path, position, MAX_READ, total_cap=0)
        except OSError:
            return position
        if not chunk:
            return position
        end = chunk.find(b"\n")
        if end >= 0:
            return position + end + 1
        position += len(chunk)
    return position


def _point(line: bytes, attempt: int) -> dict[str, Any] | None:
    """One line as a point, or None when it is not a usable metrics line (never an error for the page)."""
    try:
        raw = json.loads(line)
        step = bounded_int(raw["step"])
        metrics = raw.get("metrics") or {}
    except (ValueError, KeyError, TypeError, RecursionError):
        return None
    if not isinstance(metrics, dict):
        return None
    values = {str(k): number for k, v in metrics.items() if (number := finite_or_none(v)) is not None
              and isinstance(v, (int, float)) and not isinstance(v, bool)}
    epoch = raw.get("epoch")
    return {"attempt": attempt, "step": step, "epoch": epoch if isinstance(epoch, int) else None,
            "time": raw.get("time") if isinstance(raw.get("time"), (int, float)) else None, "metrics": values}
