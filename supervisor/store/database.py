"""``Store``: the single source of truth, one SQLite database (WAL) of jobs, attempts, events and owed alerts.

The daemon's loop thread is the only writer; API threads read beside it (WAL), each
on its own connection. Every state change and its event (and the alert it owes) are
written in one transaction, so a daemon killed at any instant leaves it consistent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from supervisor.errors import JobNotFound
from supervisor.rules.causes import EventKind
from supervisor.rules.states import TERMINAL_STATES, JobState, check_transition
from supervisor.store.listing import JobPage, active_jobs, attempts_of, finished_page, state_counts
from supervisor.store.pruning import (
    PruneCounts,
    count_prunable,
    job_row_counts,
    prune_alerts,
    prune_events,
    prune_job_rows,
)
from supervisor.store.rows import (
    ATTEMPT_FIELDS,
    JOB_FIELDS,
    AttemptRow,
    EventRow,
    JobRow,
    OutboxAlert,
    attempt_from_row,
    attempt_values,
    event_from_row,
    job_from_row,
    job_values,
    job_values_partial,
    outbox_from_row,
)
from supervisor.store.schema import best_facts, ensure_schema
from supervisor.store.sql import insert_event, insert_outbox, transaction, update

TERMINAL_VALUES = tuple(sorted(s.value for s in TERMINAL_STATES))
TERMINAL_MARKS = ", ".join("?" * len(TERMINAL_VALUES))
# Above every character a job id can hold (UTF-8 compares byte-wise): ``[prefix, prefix + PREFIX_END)`` is
# every id that starts with ``prefix``.
PREFIX_END = "\U0010ffff"


class Store:
    """Jobs, attempts, events and the alert outbox in ``<state>/supervisor.db``; one connection per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        ensure_schema(self._conn(), self.path)

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (sqlite3 connections are not shared across threads)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed state change survives a power cut, not only a process crash.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        """A write transaction on this thread's connection."""
        return transaction(self._conn())

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        """The daemon's own value stored under ``key``, or None."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` (replacing any)."""
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- jobs ----------------------------------------------------------------------------------
    def insert_job(self, job: JobRow, *, message: str, data: dict[str, Any] | None = None) -> None:
        """Create a job and its ``submitted`` event in one transaction."""
        values = job_values(job)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs({', '.join(JOB_FIELDS)}) VALUES ({', '.join('?' * len(JOB_FIELDS))})",
                [values[k] for k in JOB_FIELDS],
            )
            insert_event(db, job.created_at, job.id, None, EventKind.SUBMITTED, message, data or {})

    def get_job(self, job_id: str, *, owner_uid: int | None = None) -> JobRow:
        """The job, or ``JobNotFound``. Accepts a unique prefix of the id.

        ``owner_uid``: only that user's jobs exist (another's id, or a prefix shared with it, is not named).
        """
        db = self._conn()
        mine, params = ("", []) if owner_uid is None else (" AND owner_uid = ?", [owner_uid])
        row = db.execute("SELECT * FROM jobs WHERE id = ?" + mine, [job_id, *params]).fetchone()
        if row is None and job_id:
            # a prefix: a range of the primary key (indexed; LIKE would read every row)
            rows = db.execute("SELECT * FROM jobs WHERE id >= ? AND id < ?" + mine + " ORDER BY id LIMIT 6",
                              [job_id, job_id + PREFIX_END, *params]).fetchall()
            if len(rows) == 1:
                row = rows[0]
            elif len(rows) > 1:
                raise JobNotFound(f"job id {job_id!r} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return job_from_row(row)

    def list_jobs(self, states: Sequence[JobState] | None = None) -> list[JobRow]:
        """Jobs, oldest first, optionally only those in ``states``."""
        db = self._conn()
        if states:
            marks = ", ".join("?" * len(states))
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at",
                              [s.value for s in states]).fetchall()
        else:
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        return [job_from_row(r) for r in rows]

    def active_jobs(self, *, owner_uid: int | None = None, states: Sequence[JobState] | None = None
                    ) -> list[JobRow]:
        """Jobs that have not finished, oldest first (indexed by state), optionally one owner's or in ``states``."""
        return active_jobs(self._conn(), owner_uid=owner_uid, states=states)

    def finished_jobs(self, *, limit: int | None = 50, offset: int = 0, since: float | None = None,
                      before: float | None = None, states: Sequence[JobState] | None = None,
                      owner_uid: int | None = None) -> JobPage:
        """A page of finished jobs (ended in ``[since, before)``), the latest end first (indexed by
        ``ended_at``), and how many match; ``limit`` None: every one."""
        return finished_page(self._conn(), limit=limit, offset=offset, since=since, before=before, states=states,
                             owner_uid=owner_uid)

    def job_counts(self, *, owner_uid: int | None = None) -> dict[str, int]:
        """How many jobs are in each state (states without jobs left out)."""
        return state_counts(self._conn(), owner_uid=owner_uid)

    def attempts_of(self, job_ids: Sequence[str]) -> dict[str, list[AttemptRow]]:
        """The attempts of each of ``job_ids``, first first, in one query per 500 jobs."""
        return attempts_of(self._conn(), job_ids)

    def prune_job(self, job_id: str, *, ended_at: float | None, now: float, keep_row: bool) -> PruneCounts | None:
        """Delete a finished job's attempts, events and alerts (and its row unless ``keep_row``: then it is
        marked pruned), in one transaction; None (nothing done) unless it is still finished and ended at
        ``ended_at`` (a job restarted since the prune was planned is left alone) and owes no unsent alert."""
        with self._tx() as db:
            return prune_job_rows(db, job_id, ended_at=ended_at, now=now, keep_row=keep_row)

    def mark_pruned(self, job_id: str, *, ended_at: float | None, now: float) -> bool:
        """Mark a finished job pruned (its files are going; a restart is refused from here on); False unless it
        is still finished and ended at ``ended_at``."""
        with self._tx() as db:
            cur = db.execute(f"UPDATE jobs SET pruned_at = COALESCE(pruned_at, ?) WHERE id = ? "
                             f"AND state IN ({TERMINAL_MARKS}) AND ended_at IS ?",
                             (now, job_id, *TERMINAL_VALUES, ended_at))
            return cur.rowcount == 1

    def job_row_counts(self, job_id: str) -> tuple[int, int, int, bool]:
        """(attempts, events, alerts, an alert still owed) of a job: what ``prune_job`` would delete."""
        return job_row_counts(self._conn(), job_id)

    def prune_events(self, before: float, *, batch: int) -> tuple[int, int]:
        """Delete up to ``batch`` events older than ``before`` of finished jobs and of the daemon (never a live
        job's, never one an unsent alert is owed for), with their delivered alerts; (events, alerts) deleted."""
        with self._tx() as db:
            return prune_events(db, before, batch=batch)

    def prune_alerts(self, before: float, *, batch: int) -> int:
        """Delete up to ``batch`` outbox alerts delivered before ``before``; how many."""
        with self._tx() as db:
            return prune_alerts(db, before, batch=batch)

    def count_prunable(self, *, events_before: float | None, alerts_before: float | None,
                       excluding: Sequence[str] = ()) -> tuple[int, int]:
        """(events, alerts) that ``prune_events`` and ``prune_alerts`` would delete once the jobs ``excluding``
        are pruned (a dry run's count)."""
        return count_prunable(self._conn(), events_before=events_before, alerts_before=alerts_before,
                              excluding=excluding)

    def update_job(self, job_id: str, *, now: float, **changes: Any) -> None:
        """Change fields that are not the state (use ``transition`` for that)."""
        if "state" in changes:
            raise ValueError("use transition() to change a job's state")
        changes["updated_at"] = now
        values = job_values_partial(changes)
        with self._tx() as db:
            update(db, "jobs", "id = ?", [job_id], values)

    def transition(self, job_id: str, new: JobState, *, now: float, message: str, kind: EventKind | None = None,
                   attempt: int | None = None, data: dict[str, Any] | None = None, alert: OutboxAlert | None = None,
                   **changes: Any) -> JobRow:
        """Move a job to ``new``: check the table, stamp, persist and record an event, atomically.

        ``alert``: the alert this change owes the user, put in the outbox in the same transaction
        (a daemon killed right after the commit still owes it: ``pending_alerts``).
        """
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"no job {job_id!r}")
            job = job_from_row(row)
            check_transition(job.state, new)
            changes.update(state=new, updated_at=now)
            if new.terminal:
                changes.setdefault("ended_at", now)
                if alert is not None:  # the ending's alert tells the best checkpoint: kept for the list
                    for key, value in best_facts(alert.details).items():
                        changes.setdefault(key, value)
            update(db, "jobs", "id = ?", [job_id], job_values_partial(changes))
            payload = {"from": job.state.value, "to": new.value, **(data or {})}
            event_id = insert_event(db, now, job_id, attempt, kind or EventKind(new.value), message, payload)
            if alert is not None:
                insert_outbox(db, event_id, job_id, alert)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_from_row(row)

    # -- attempts ------------------------------------------------------------------------------
    def insert_attempt(self, attempt: AttemptRow) -> None:
        """Record a new attempt (before its process starts: a crash then still knows of it)."""
        values = attempt_values(attempt.__dict__)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO attempts({', '.join(ATTEMPT_FIELDS)}) VALUES ({', '.join('?' * len(ATTEMPT_FIELDS))})",
                [values[k] for k in ATTEMPT_FIELDS],
            )

    def delete_attempt(self, job_id: str, n: int) -> None:
        """Forget an attempt that never started (its launch was refused before any process ran)."""
        with self._tx() as db:
            db.execute("DELETE FROM attempts WHERE job_id = ? AND n = ?", (job_id, n))

    def update_attempt(self, job_id: str, n: int, **changes: Any) -> None:
        """Change fields of attempt ``n`` of ``job_id``; ``JobNotFound`` when there is no such attempt."""
        with self._tx() as db:
            update(db, "attempts", "job_id = ? AND n = ?", [job_id, n], attempt_values(changes))

    def attempts(self, job_id: str) -> list[AttemptRow]:
        """The job's attempts, first first."""
        rows = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
        return [attempt_from_row(r) for r in rows]

    def last_attempt(self, job_id: str) -> AttemptRow | None:
        """The job's latest attempt, or None before its first."""
        row = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY n DESC LIMIT 1",
                                   (job_id,)).fetchone()
        return None if row is None else attempt_from_row(row)

    # -- events --------------------------------------------------------------------------------
    def add_event(self, job_id: str | None, kind: EventKind, message: str, *, now: float | None = None,
                  attempt: int | None = None, data: dict[str, Any] | None = None, durable: bool = True,
                  alert: OutboxAlert | None = None) -> int:
        """Record an event. ``durable=False`` skips the fsync (informational events, e.g. each
        checkpoint): a power cut may lose it, never the database's consistency, and the next
        durable commit syncs it too. ``alert``: the alert the event owes the user, put in the
        outbox in the same transaction (needs ``job_id``)."""
        db = self._conn()
        if not durable:
            db.execute("PRAGMA synchronous=NORMAL")
        try:
            with self._tx() as tx:
                event_id = insert_event(tx, time.time() if now is None else now, job_id, attempt, kind, message,
                                        data or {})
                if alert is not None:
                    insert_outbox(tx, event_id, job_id, alert)
                return event_id
        finally:
            if not durable:
                db.execute("PRAGMA synchronous=FULL")

    def events(self, *, after_id: int = 0, job_id: str | None = None, limit: int = 1000,
               owner_uid: int | None = None) -> list[EventRow]:
        """Events with id > ``after_id``, oldest first; with ``owner_uid``, only those of that user's jobs."""
        db = self._conn()
        where = "id > ?"
        params: list[Any] = [after_id]
        if job_id is not None:
            where, params = where + " AND job_id = ?", [*params, job_id]
        if owner_uid is not None:
            where, params = where + " AND job_id IN (SELECT id FROM jobs WHERE owner_uid = ?)", [*params, owner_uid]
        rows = db.execute(f"SELECT * FROM events WHERE {where} ORDER BY id LIMIT ?", [*params, limit]).fetchall()
        return [event_from_row(r) for r in rows]

    def last_event_time(self, job_id: str, kind: EventKind) -> float | None:
        """When the job's latest event of ``kind`` was recorded, or None when it has none."""
        row = self._conn().execute("SELECT MAX(time) AS t FROM events WHERE job_id = ? AND kind = ?",
                                   (job_id, kind)).fetchone()
        return None if row["t"] is None else float(row["t"])

    def last_event_data(self, job_id: str, kind: EventKind) -> dict[str, Any] | None:
        """The data of the job's latest event of ``kind`` (None when it has none)."""
        row = self._conn().execute("SELECT data FROM events WHERE job_id = ? AND kind = ? ORDER BY id DESC LIMIT 1",
                                   (job_id, kind)).fetchone()
        if row is None or not row["data"]:
            return None
        data = json.loads(row["data"])
        return data if isinstance(data, dict) else None

    def last_event(self, job_id: str, kinds: Sequence[EventKind]) -> EventRow | None:
        """The job's latest event of any of ``kinds`` (None when it has none)."""
        marks = ", ".join("?" * len(kinds))
        row = self._conn().execute(f"SELECT * FROM events WHERE job_id = ? AND kind IN ({marks}) ORDER BY id DESC "
                                   "LIMIT 1", (job_id, *kinds)).fetchone()
        return None if row is None else event_from_row(row)

    def last_event_id(self) -> int:
        """The id of the latest event (0 when there is none)."""
        row = self._conn().execute("SELECT MAX(id) AS m FROM events").fetchone()
        return int(row["m"] or 0)

    # -- the alert outbox ----------------------------------------------------------------------
    def pending_alerts(self) -> list[OutboxAlert]:
        """Alerts written with their event and not yet marked sent, oldest first."""
        rows = self._conn().execute("SELECT * FROM alert_outbox WHERE sent_at IS NULL ORDER BY event_id").fetchall()
        return [outbox_from_row(r) for r in rows]

    def mark_alert_sent(self, event_id: int, *, now: float) -> None:
        """The outbox alert of ``event_id`` was handed to the dispatcher (recorded in ``alerts.jsonl``)."""
        with self._tx() as db:
            db.execute("UPDATE alert_outbox SET sent_at = ? WHERE event_id = ?", (now, event_id))
