"""The SQL steps that several store operations share, each run inside the caller's transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from supervisor.errors import JobNotFound
from supervisor.rules.causes import EventKind
from supervisor.store.rows import OutboxAlert


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` (take the write lock now, not at the first write) ... ``COMMIT``, or roll back."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def insert_event(db: sqlite3.Connection, now: float, job_id: str | None, attempt: int | None, kind: EventKind,
                 message: str, data: dict[str, Any]) -> int:
    """Append an event; its id."""
    cur = db.execute("INSERT INTO events(time, job_id, attempt, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                     (now, job_id, attempt, kind.value, message, json.dumps(data, default=str)))
    return int(cur.lastrowid or 0)


def insert_outbox(db: sqlite3.Connection, event_id: int, job_id: str | None, alert: OutboxAlert) -> None:
    """Put ``alert`` in the outbox, owed because of event ``event_id`` of job ``job_id``."""
    if job_id is None:
        raise ValueError("an outbox alert belongs to a job")
    db.execute("INSERT INTO alert_outbox(event_id, job_id, alert, details) VALUES (?, ?, ?, ?)",
               (event_id, job_id, alert.alert, json.dumps(alert.details, default=str)))


def update(db: sqlite3.Connection, table: str, where: str, params: list[Any], values: dict[str, Any]) -> None:
    """Set ``values`` (columns already encoded) in the row of ``table`` matching ``where``; ``JobNotFound`` if none."""
    if not values:
        return
    sets = ", ".join(f"{k} = ?" for k in values)
    cur = db.execute(f"UPDATE {table} SET {sets} WHERE {where}", [*values.values(), *params])
    if cur.rowcount == 0:
        raise JobNotFound(f"no such row in {table}: {params}")
