"""The checkpoint manifest: ``checkpoints/manifest.jsonl``, one event per line.

It lets the daemon pick "best" and "last" without torch. Events:

    {"event": "save", "path": ABS, "step": 40, "epoch": 1, "monitor": "val_loss", "score": 0.23,
     "mode": "min", "size": 123456, "time": 1.7e9, "attempt": 2, "kind": "topk", "finite": true}
    {"event": "remove", "path": ABS, "time": ..., "attempt": 2}
    {"event": "abandon", "paths": [ABS, ...], "resumed_from": ABS, "step": 20, "time": ..., "attempt": 3}
    {"event": "unusable", "from_step": 120, "why": "diverged at step 120: ...", "time": ..., "attempt": 2}

A ``save`` line is appended only once the file is complete and renamed into
place. ``kind`` is ``topk`` (kept by score), ``last`` (``last.ckpt``, replaced
in place) or ``signal`` (saved on the way out after SIGTERM). ``score`` is
``null`` when there is no monitor or it was not finite; ``finite`` says whether
every logged metric was finite at that step. ``abandon`` records that a resume
rewound the run: the listed files were moved to ``abandoned/<attempt>/`` and are
no longer part of the current timeline.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import append_json_line, read_json_lines
from supervisor.jobfiles.bounds import bounded_int, clamped_count, optional_duration, unix_time
from supervisor.jobfiles.safe_read import stat_following


@dataclass(frozen=True)
class CheckpointEntry:
    """One live checkpoint of the current timeline."""

    path: str
    step: int
    epoch: int
    monitor: str | None
    score: float | None
    mode: str
    size: int
    time: float
    attempt: int
    kind: str = "topk"
    finite: bool = True
    save_s: float | None = None  # how long the save stalled training (every_n_train_steps: auto reads it)

    def to_event(self) -> dict[str, Any]:
        return {"event": "save", **asdict(self)}


def record_save(manifest: str | Path, entry: CheckpointEntry) -> None:
    """Append a ``save`` line. Call only after the file is complete at ``entry.path``."""
    append_json_line(manifest, entry.to_event())


def record_remove(manifest: str | Path, path: str, attempt: int) -> None:
    """Append a ``remove`` line (top-k dropped the file)."""
    append_json_line(manifest, {"event": "remove", "path": str(path), "time": time.time(), "attempt": attempt})


def record_unusable(manifest: str | Path, from_step: int, attempt: int, why: str) -> None:
    """Every checkpoint saved so far at ``from_step`` or later holds bad weights (the loss diverged there)."""
    append_json_line(manifest, {"event": "unusable", "from_step": int(from_step), "why": why, "time": time.time(),
                                "attempt": attempt})


def live_checkpoints(manifest: str | Path, *, require_file: bool = True) -> list[CheckpointEntry]:
    """The current timeline's checkpoints, in save order (oldest first).

    A path saved twice (``last.ckpt``) keeps its latest entry. Entries whose file
    is gone are dropped when ``require_file`` is set.
    """
    entries = live_in(read_json_lines(manifest))
    if require_file:
        entries = [e for e in entries if stat_following(e.path) is not None]  # a stall raises: the job waits
    return entries


def live_in(events: Iterable[Any]) -> list[CheckpointEntry]:
    """The checkpoints that ``events`` (a manifest's lines, oldest first) leave live, in save order."""
    live: dict[str, CheckpointEntry] = {}
    for event in events:
        if not isinstance(event, dict):
            continue  # valid JSON but not an event: nothing a writer of ours produced
        kind = event.get("event")
        if kind == "save":
            try:
                entry = _entry_from_event(event)
            except (KeyError, TypeError, ValueError):
                continue
            live.pop(entry.path, None)  # re-insert so dict order is save order
            live[entry.path] = entry
        elif kind == "remove":
            live.pop(str(event.get("path")), None)
        elif kind == "abandon" and isinstance(event.get("paths"), list):
            for path in event["paths"]:
                live.pop(str(path), None)
        elif kind == "unusable":  # saves after this line (a rolled-back timeline) stay live
            try:
                from_step = bounded_int(event.get("from_step"))
            except (TypeError, ValueError):
                continue
            for path in [p for p, e in live.items() if e.step >= from_step]:
                del live[path]
    return list(live.values())


def rank_best(entries: Iterable[CheckpointEntry]) -> list[CheckpointEntry]:
    """Best first. With a monitor: by score in its mode (unscored last); without: newest first.

    On a tied score a top-k file wins over ``last.ckpt`` or a signal save: their
    score is the last *validated* value, carried over to weights that were not
    validated. Then the later step wins.
    """
    items = list(entries)

    def key(e: CheckpointEntry) -> tuple[int, float, bool, int, float]:
        if e.monitor and e.score is not None:
            signed = e.score if e.mode == "min" else -e.score
            return (0, signed, e.kind != "topk", -e.step, -e.time)
        return (1, 0.0, False, -e.step, -e.time)

    return sorted(items, key=key)


def rank_newest(entries: Iterable[CheckpointEntry]) -> list[CheckpointEntry]:
    """Newest first (highest step, then latest save)."""
    return sorted(entries, key=lambda e: (-e.step, -e.time))


def abandon_after(manifest: str | Path, resume_path: str | Path, attempt: int) -> list[str]:
    """Rewind the timeline to ``resume_path``: move every later checkpoint aside.

    Later means a higher global step than the resume point's. The files move to
    ``abandoned/<attempt>/`` beside the manifest (nothing is deleted), and one
    ``abandon`` line records them, so later best/last look-ups and top-k never
    see them. Returns the moved paths; no-op when ``resume_path`` is not in
    this manifest's timeline or is already the newest.
    """
    manifest = Path(manifest)
    live = live_checkpoints(manifest, require_file=False)
    resume = os.path.abspath(resume_path)
    point = next((e for e in live if os.path.abspath(e.path) == resume), None)
    if point is None:
        return []
    later = [e for e in live if e.step > point.step]
    return _abandon(manifest, later, resumed_from=resume, step=point.step, attempt=attempt)


def abandon_all(manifest: str | Path, attempt: int) -> list[str]:
    """Move every live checkpoint aside: a start from scratch begins a new timeline at step 0."""
    manifest = Path(manifest)
    return _abandon(manifest, live_checkpoints(manifest, require_file=False), resumed_from=None, step=0,
                    attempt=attempt)


def _abandon(manifest: Path, entries: list[CheckpointEntry], *, resumed_from: str | None, step: int,
             attempt: int) -> list[str]:
    """Move ``entries`` to ``abandoned/<attempt>/`` and record one ``abandon`` line (nothing is deleted)."""
    if not entries:
        return []
    dest = manifest.parent / "abandoned" / str(attempt)
    dest.mkdir(parents=True, exist_ok=True)
    moved = []
    for entry in entries:
        if os.path.exists(entry.path):
            shutil.move(entry.path, dest / Path(entry.path).name)
        moved.append(entry.path)
    append_json_line(manifest, {
        "event": "abandon", "paths": moved, "resumed_from": resumed_from, "step": step,
        "time": time.time(), "attempt": attempt,
    })
    return moved


def _entry_from_event(event: dict[str, Any]) -> CheckpointEntry:
    score = event.get("score")
    return CheckpointEntry(
        path=str(event["path"]),
        step=bounded_int(event["step"]),  # numbers checked: see bounds.py
        epoch=clamped_count(event.get("epoch", 0)),
        monitor=event.get("monitor"),
        score=float(score) if score is not None else None,
        mode=str(event.get("mode", "min")),
        size=clamped_count(event.get("size", 0)),
        time=unix_time(event.get("time", 0.0)),
        attempt=bounded_int(event.get("attempt", 0)),
        kind=str(event.get("kind", "topk")),
        finite=bool(event.get("finite", True)),
        save_s=optional_duration(event.get("save_s")),
    )
