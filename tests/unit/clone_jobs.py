"""Thousands of finished jobs in a state dir, fast: copies of jobs the daemon itself ran and finished.

Used by the scale tests and by ``bench/scale.py``. Running 10,000 jobs through a daemon takes hours (each submit
runs an import check, each job a trainer); a copy takes milliseconds. A copy is exactly what the daemon wrote
for a seed job, with two changes: the seed's id is replaced by the copy's everywhere it appears (every text
column of its rows, every text file of its directory, and file names), and every time is shifted by the same
amount (so the copies end at different times, each keeping its seed's durations). Rows are inserted with the
columns the daemon's store wrote; events and alerts keep their order and get new ids, in the same way the
daemon's ``AUTOINCREMENT`` gives them. Binary files (checkpoints) are hard links to the seed's.

The daemon must not be running on the state dir while it is filled.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TIME_COLUMNS = {
    "jobs": ("created_at", "updated_at", "first_started_at", "ended_at", "next_start_at", "stop_deadline",
             "pruned_at"),
    "attempts": ("started_at", "ended_at"),
    "events": ("time",),
    "alert_outbox": ("sent_at",),
}
TEXT_SUFFIXES = {".yaml", ".json", ".jsonl", ".log", ".txt"}


@dataclass(frozen=True)
class Seed:
    """A finished job as the daemon left it: its rows (as stored) and its directory."""

    job: dict[str, Any]
    attempts: list[dict[str, Any]]
    events: list[dict[str, Any]]
    alerts: list[dict[str, Any]]  # alert_outbox rows, by the index of their event in ``events``


def _rows(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in db.execute(sql, params).fetchall()]


def read_seeds(db_path: Path, job_ids: Iterable[str]) -> list[Seed]:
    db = sqlite3.connect(db_path)
    db.row_factory = sqlite3.Row
    seeds = []
    try:
        for job_id in job_ids:
            (job,) = _rows(db, "SELECT * FROM jobs WHERE id = ?", (job_id,))
            events = _rows(db, "SELECT * FROM events WHERE job_id = ? ORDER BY id", (job_id,))
            index = {e["id"]: i for i, e in enumerate(events)}
            alerts = _rows(db, "SELECT * FROM alert_outbox WHERE job_id = ? ORDER BY event_id", (job_id,))
            for a in alerts:
                a["event_id"] = index[a["event_id"]]
            seeds.append(Seed(job=job, attempts=_rows(db, "SELECT * FROM attempts WHERE job_id = ? ORDER BY n",
                                                      (job_id,)), events=events, alerts=alerts))
    finally:
        db.close()
    return seeds


def _renamed(row: dict[str, Any], table: str, old: str, new: str, shift: float) -> dict[str, Any]:
    out = {}
    for key, value in row.items():
        if isinstance(value, str):
            value = value.replace(old, new)
        elif key in TIME_COLUMNS[table] and value is not None:
            value = value + shift
        out[key] = value
    return out


def _insert(db: sqlite3.Connection, table: str, row: dict[str, Any]) -> int:
    cur = db.execute(f"INSERT INTO {table}({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    return int(cur.lastrowid or 0)


def clone_jobs(state_dir: Path, seeds: Sequence[Seed], n: int, *, spacing_s: float = 60.0,
               files: bool = True, prefix: str = "c") -> list[str]:
    """Add ``n`` copies of the seeds (round robin) to ``state_dir``; copy ``i`` ends ``i * spacing_s`` seconds
    before its seed did. Their ids, oldest end last."""
    db = sqlite3.connect(state_dir / "supervisor.db")
    made = []
    try:
        db.execute("BEGIN IMMEDIATE")
        for i in range(n):
            seed = seeds[i % len(seeds)]
            old = seed.job["id"]
            new = f"{seed.job['name']}-{prefix}{i:07x}"
            shift = -(i + 1) * spacing_s
            _insert(db, "jobs", _renamed(seed.job, "jobs", old, new, shift))
            for a in seed.attempts:
                _insert(db, "attempts", _renamed(a, "attempts", old, new, shift))
            ids = []
            for e in seed.events:
                row = _renamed(e, "events", old, new, shift)
                del row["id"]
                ids.append(_insert(db, "events", row))
            for a in seed.alerts:
                row = _renamed(a, "alert_outbox", old, new, shift)
                row["event_id"] = ids[a["event_id"]]
                _insert(db, "alert_outbox", row)
            if files:
                copy_tree(Path(seed.job["job_dir"]), Path(seed.job["job_dir"].replace(old, new)), old, new)
            made.append(new)
        db.execute("COMMIT")
    finally:
        db.close()
    return made


def copy_tree(src: Path, dst: Path, old: str, new: str) -> None:
    """``src`` as ``dst``: directories and links made again, text files rewritten with ``new`` for ``old``, other
    files hard-linked (a checkpoint is the same bytes), names renamed the same way."""
    dst.mkdir(parents=True, exist_ok=True)
    os.chmod(dst, src.stat().st_mode & 0o7777)
    for entry in os.scandir(src):
        target = dst / entry.name.replace(old, new)
        if entry.is_symlink():
            os.symlink(os.readlink(entry.path).replace(old, new), target)
        elif entry.is_dir(follow_symlinks=False):
            copy_tree(Path(entry.path), target, old, new)
        elif entry.is_file(follow_symlinks=False):
            if Path(entry.name).suffix in TEXT_SUFFIXES or entry.name.endswith(".lock"):
                data = Path(entry.path).read_bytes()
                target.write_bytes(data.replace(old.encode(), new.encode()))
            else:
                os.link(entry.path, target)
