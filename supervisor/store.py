"""The single source of truth: one SQLite database (WAL) with jobs, attempts and events.

The daemon's loop thread is the only writer; API threads read concurrently
(WAL lets readers run beside the writer). Each thread gets its own connection.
A daemon killed at any instant leaves the database consistent: every state
change and its event are written in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from supervisor.errors import JobNotFound, StoreError
from supervisor.rules.causes import Cause, EventKind
from supervisor.rules.states import JobState, check_transition

SCHEMA_VERSION = 4
"""1: the first cut (local attempt monitors in dedicated columns). 2: runner kind + runner-owned JSON state.
3: jobs have an owner (``owner_uid``: who submitted it; shared-server mode). 4: the alert outbox."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    end_reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    first_started_at REAL,
    ended_at REAL,
    job_dir TEXT NOT NULL,
    workdir TEXT NOT NULL,
    config_source TEXT NOT NULL,
    budget_s REAL,
    gpus_requested INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    wandb_run_id TEXT,
    next_start_at REAL,
    wait_reason TEXT,
    stop_intent TEXT,
    stop_deadline REAL,
    best_checkpoint TEXT,
    detail TEXT,
    owner_uid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    n INTEGER NOT NULL,
    runner_kind TEXT NOT NULL DEFAULT 'local',
    runner_state TEXT NOT NULL DEFAULT '{}',
    pid INTEGER,
    boot_id TEXT,
    gpus TEXT NOT NULL DEFAULT '[]',
    started_at REAL NOT NULL,
    ended_at REAL,
    exit_code INTEGER,
    signal TEXT,
    reason TEXT,
    detail TEXT,
    resumed_from TEXT,
    new_checkpoints INTEGER NOT NULL DEFAULT 0,
    global_step INTEGER,
    PRIMARY KEY (job_id, n)
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    job_id TEXT,
    attempt INTEGER,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alert_outbox (
    event_id INTEGER PRIMARY KEY REFERENCES events(id),
    job_id TEXT NOT NULL,
    alert TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON alert_outbox(event_id) WHERE sent_at IS NULL;
"""


@dataclass
class JobRow:
    id: str
    name: str
    state: JobState
    created_at: float
    updated_at: float
    job_dir: str
    workdir: str
    config_source: str
    end_reason: str | None = None
    first_started_at: float | None = None
    ended_at: float | None = None
    budget_s: float | None = None
    gpus_requested: int = 0
    restarts: int = 0
    wandb_run_id: str | None = None
    next_start_at: float | None = None
    wait_reason: str | None = None
    stop_intent: str | None = None
    stop_deadline: float | None = None
    best_checkpoint: str | None = None
    detail: str | None = None
    # Who submitted the job (the uid the kernel gave for the socket's peer); its trainers run as this user.
    owner_uid: int = field(default_factory=os.getuid)


@dataclass
class AttemptRow:
    job_id: str
    n: int
    started_at: float
    runner_kind: str = "local"
    runner_state: dict[str, Any] = field(default_factory=dict)  # the runner's own, opaque to everyone else
    pid: int | None = None  # the trainer's pid, for people (status, history)
    boot_id: str | None = None
    gpus: list[int] = field(default_factory=list)
    ended_at: float | None = None
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None  # a Cause (see .cause); the column keeps its documented name
    detail: str | None = None
    resumed_from: str | None = None
    new_checkpoints: int = 0
    global_step: int | None = None

    @property
    def live(self) -> bool:
        return self.ended_at is None

    @property
    def cause(self) -> Cause | None:
        """Why the attempt ended (stored, and shown in ``status --json``, as ``reason``); None when not
        recorded, or not a cause this version knows (the policy then counts it as unrecorded)."""
        known = {c.value for c in Cause}
        return Cause(self.reason) if self.reason is not None and self.reason in known else None


@dataclass(frozen=True)
class OutboxAlert:
    """An alert owed to the user, written in the transaction of the event that causes it.

    ``alert`` names the alert event (``restart``, ``completed``, ...), ``details`` its facts;
    ``event_id`` is the causing event's id: the alert's identity, for dedup downstream.
    """

    alert: str
    details: dict[str, Any]
    job_id: str = ""
    event_id: int = 0


@dataclass
class EventRow:
    id: int
    time: float
    job_id: str | None
    attempt: int | None
    kind: str
    message: str
    data: dict[str, Any]


_JOB_FIELDS = [f.name for f in fields(JobRow)]
_ATTEMPT_FIELDS = [f.name for f in fields(AttemptRow)]


class Store:
    """Jobs, attempts and events in ``<state>/supervisor.db``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._local = threading.local()
        # executescript commits on its own: it cannot run inside _tx.
        fresh = not self._has_table("attempts")
        self._conn().executescript(_SCHEMA)
        with self._tx() as db:
            if fresh:
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                           (str(SCHEMA_VERSION),))
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row["value"]) if row is not None else 1
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema_version: {version} is newer than this ml-supervisor "
                                 f"understands ({SCHEMA_VERSION}); upgrade ml-supervisor")
            if version < 2:
                _migrate_1_to_2(db)
            if version < 3:
                _migrate_2_to_3(db, os.getuid())
            if version < 4:
                # The executescript above created the (empty) outbox: nothing owed from before.
                db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '4')")

    def _has_table(self, name: str) -> bool:
        row = self._conn().execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return row.fetchone() is not None

    # -- connections -------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
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

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- jobs ----------------------------------------------------------------------------------
    def insert_job(self, job: JobRow, *, message: str, data: dict[str, Any] | None = None) -> None:
        """Create a job and its ``submitted`` event in one transaction."""
        values = _job_values(job)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs({', '.join(_JOB_FIELDS)}) VALUES ({', '.join('?' * len(_JOB_FIELDS))})",
                [values[k] for k in _JOB_FIELDS],
            )
            _insert_event(db, job.created_at, job.id, None, EventKind.SUBMITTED, message, data or {})

    def get_job(self, job_id: str, *, owner_uid: int | None = None) -> JobRow:
        """The job, or ``JobNotFound``. Accepts a unique prefix of the id.

        ``owner_uid``: only that user's jobs exist (another's id, or a prefix shared with it, is not named).
        """
        db = self._conn()
        mine, params = ("", []) if owner_uid is None else (" AND owner_uid = ?", [owner_uid])
        row = db.execute("SELECT * FROM jobs WHERE id = ?" + mine, [job_id, *params]).fetchone()
        if row is None:
            rows = db.execute("SELECT * FROM jobs WHERE id LIKE ? ESCAPE '\\'" + mine,
                              [job_id.replace("%", "\\%").replace("_", "\\_") + "%", *params]).fetchall()
            if len(rows) == 1:
                row = rows[0]
            elif len(rows) > 1:
                raise JobNotFound(f"job id {job_id!r} is ambiguous: {', '.join(r['id'] for r in rows[:5])}")
        if row is None:
            raise JobNotFound(f"no job {job_id!r}")
        return _job_from_row(row)

    def list_jobs(self, states: Sequence[JobState] | None = None) -> list[JobRow]:
        """Jobs, oldest first, optionally only those in ``states``."""
        db = self._conn()
        if states:
            marks = ", ".join("?" * len(states))
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at",
                              [s.value for s in states]).fetchall()
        else:
            rows = db.execute("SELECT * FROM jobs ORDER BY created_at").fetchall()
        return [_job_from_row(r) for r in rows]

    def update_job(self, job_id: str, *, now: float, **changes: Any) -> None:
        """Change fields that are not the state (use ``transition`` for that)."""
        if "state" in changes:
            raise ValueError("use transition() to change a job's state")
        changes["updated_at"] = now
        values = _job_values_partial(changes)
        with self._tx() as db:
            _update(db, "jobs", "id = ?", [job_id], values)

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
            job = _job_from_row(row)
            check_transition(job.state, new)
            changes.update(state=new, updated_at=now)
            if new.terminal:
                changes.setdefault("ended_at", now)
            _update(db, "jobs", "id = ?", [job_id], _job_values_partial(changes))
            payload = {"from": job.state.value, "to": new.value, **(data or {})}
            event_id = _insert_event(db, now, job_id, attempt, kind or EventKind(new.value), message, payload)
            if alert is not None:
                _insert_outbox(db, event_id, job_id, alert)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job_from_row(row)

    # -- attempts ------------------------------------------------------------------------------
    def insert_attempt(self, attempt: AttemptRow) -> None:
        values = _attempt_values(attempt.__dict__)
        with self._tx() as db:
            db.execute(
                f"INSERT INTO attempts({', '.join(_ATTEMPT_FIELDS)}) VALUES ({', '.join('?' * len(_ATTEMPT_FIELDS))})",
                [values[k] for k in _ATTEMPT_FIELDS],
            )

    def delete_attempt(self, job_id: str, n: int) -> None:
        """Forget an attempt that never started (its launch was refused before any process ran)."""
        with self._tx() as db:
            db.execute("DELETE FROM attempts WHERE job_id = ? AND n = ?", (job_id, n))

    def update_attempt(self, job_id: str, n: int, **changes: Any) -> None:
        with self._tx() as db:
            _update(db, "attempts", "job_id = ? AND n = ?", [job_id, n], _attempt_values(changes))

    def attempts(self, job_id: str) -> list[AttemptRow]:
        rows = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY n", (job_id,)).fetchall()
        return [_attempt_from_row(r) for r in rows]

    def last_attempt(self, job_id: str) -> AttemptRow | None:
        row = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY n DESC LIMIT 1",
                                   (job_id,)).fetchone()
        return None if row is None else _attempt_from_row(row)

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
                event_id = _insert_event(tx, time.time() if now is None else now, job_id, attempt, kind, message,
                                         data or {})
                if alert is not None:
                    _insert_outbox(tx, event_id, job_id, alert)
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
        return [EventRow(id=r["id"], time=r["time"], job_id=r["job_id"], attempt=r["attempt"], kind=r["kind"],
                         message=r["message"], data=json.loads(r["data"])) for r in rows]

    def last_event_time(self, job_id: str, kind: EventKind) -> float | None:
        """When the job's latest event of ``kind`` was recorded, or None when it has none."""
        row = self._conn().execute("SELECT MAX(time) AS t FROM events WHERE job_id = ? AND kind = ?",
                                   (job_id, kind)).fetchone()
        return None if row["t"] is None else float(row["t"])

    def last_event_id(self) -> int:
        row = self._conn().execute("SELECT MAX(id) AS m FROM events").fetchone()
        return int(row["m"] or 0)

    # -- the alert outbox ----------------------------------------------------------------------
    def pending_alerts(self) -> list[OutboxAlert]:
        """Alerts written with their event and not yet marked sent, oldest first."""
        rows = self._conn().execute("SELECT * FROM alert_outbox WHERE sent_at IS NULL ORDER BY event_id").fetchall()
        return [OutboxAlert(alert=r["alert"], details=json.loads(r["details"]), job_id=r["job_id"],
                            event_id=r["event_id"]) for r in rows]

    def mark_alert_sent(self, event_id: int, *, now: float) -> None:
        """The outbox alert of ``event_id`` was handed to the dispatcher (recorded in ``alerts.jsonl``)."""
        with self._tx() as db:
            db.execute("UPDATE alert_outbox SET sent_at = ? WHERE event_id = ?", (now, event_id))


def _insert_outbox(db: sqlite3.Connection, event_id: int, job_id: str | None, alert: OutboxAlert) -> None:
    if job_id is None:
        raise ValueError("an outbox alert belongs to a job")
    db.execute("INSERT INTO alert_outbox(event_id, job_id, alert, details) VALUES (?, ?, ?, ?)",
               (event_id, job_id, alert.alert, json.dumps(alert.details, default=str)))


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    """Attempts of schema 1 were all local: their monitor/trainer columns become the local runner's state.

    The old columns stay (SQLite drops columns poorly, and an old daemon could still read them);
    nothing reads them any more.
    """
    db.execute("ALTER TABLE attempts ADD COLUMN runner_kind TEXT NOT NULL DEFAULT 'local'")
    db.execute("ALTER TABLE attempts ADD COLUMN runner_state TEXT NOT NULL DEFAULT '{}'")
    rows = db.execute("SELECT job_id, n, monitor_pid, monitor_started, pid, pgid FROM attempts").fetchall()
    for r in rows:
        state = {"monitor_pid": r["monitor_pid"], "monitor_started": r["monitor_started"], "trainer_pid": r["pid"],
                 "pgid": r["pgid"]}
        db.execute("UPDATE attempts SET runner_state = ? WHERE job_id = ? AND n = ?",
                   (json.dumps(state), r["job_id"], r["n"]))
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '2')")


def _migrate_2_to_3(db: sqlite3.Connection, daemon_uid: int) -> None:
    """Jobs get an owner: those from before shared-server mode were all the daemon's user's."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
    if "owner_uid" not in columns:  # a schema-1 file without a jobs table got it, owner_uid included, just now
        db.execute(f"ALTER TABLE jobs ADD COLUMN owner_uid INTEGER NOT NULL DEFAULT {int(daemon_uid)}")
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '3')")


def _insert_event(db: sqlite3.Connection, now: float, job_id: str | None, attempt: int | None, kind: EventKind,
                  message: str, data: dict[str, Any]) -> int:
    cur = db.execute("INSERT INTO events(time, job_id, attempt, kind, message, data) VALUES (?, ?, ?, ?, ?, ?)",
                     (now, job_id, attempt, kind.value, message, json.dumps(data, default=str)))
    return int(cur.lastrowid or 0)


def _update(db: sqlite3.Connection, table: str, where: str, params: list[Any], values: dict[str, Any]) -> None:
    if not values:
        return
    sets = ", ".join(f"{k} = ?" for k in values)
    cur = db.execute(f"UPDATE {table} SET {sets} WHERE {where}", [*values.values(), *params])
    if cur.rowcount == 0:
        raise JobNotFound(f"no such row in {table}: {params}")


def _job_values(job: JobRow) -> dict[str, Any]:
    return _job_values_partial({k: getattr(job, k) for k in _JOB_FIELDS})


def _job_values_partial(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(_JOB_FIELDS)
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    return {k: (v.value if isinstance(v, JobState) else v) for k, v in changes.items()}


def _attempt_values(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = set(changes) - set(_ATTEMPT_FIELDS)
    if unknown:
        raise ValueError(f"unknown attempt fields: {sorted(unknown)}")
    return {k: (json.dumps(v) if k in ("gpus", "runner_state") else v) for k, v in changes.items()}


def _job_from_row(row: sqlite3.Row) -> JobRow:
    values = {k: row[k] for k in _JOB_FIELDS}
    values["state"] = JobState(values["state"])
    return JobRow(**values)


def _attempt_from_row(row: sqlite3.Row) -> AttemptRow:
    values = {k: row[k] for k in _ATTEMPT_FIELDS}
    values["gpus"] = json.loads(values["gpus"] or "[]")
    values["runner_state"] = json.loads(values["runner_state"] or "{}")
    return AttemptRow(**values)
