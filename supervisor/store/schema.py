"""The database's tables and the migrations from older schema versions, applied when the store opens."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from supervisor.errors import StoreError
from supervisor.store.sql import transaction

SCHEMA_VERSION = 7
"""1: the first cut (local attempt monitors in dedicated columns). 2: runner kind + runner-owned JSON state.
3: jobs have an owner (``owner_uid``: who submitted it; shared-server mode). 4: the alert outbox.
5: scheduled runs (``schedules``: ``supervisorctl submit --at/--cron``; ``store/schedules.py``).
6: a finished job's best checkpoint facts (``best_score``, ``best_step``, ``best_monitor``: the list shows them
without reading the manifest), ``pruned_at`` (``supervisorctl prune``), and the indexes ``list`` and ``prune`` use.
7: an attempt's ``world_size`` and ``accumulate_grad_batches`` (elastic DDP: an attempt may run on fewer GPUs)."""

SCHEMA = """
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
    owner_uid INTEGER NOT NULL,
    best_score REAL,
    best_step INTEGER,
    best_monitor TEXT,
    pruned_at REAL
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
    world_size INTEGER,
    accumulate_grad_batches INTEGER,
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
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    timezone TEXT NOT NULL,
    misfire TEXT NOT NULL,
    config_path TEXT NOT NULL,
    cwd TEXT NOT NULL,
    config_text TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    owner_uid INTEGER NOT NULL,
    overrides TEXT NOT NULL DEFAULT '[]',
    job_name TEXT,
    state TEXT NOT NULL,
    next_run_at REAL,
    firing_at REAL,
    last_run_at REAL,
    last_job_id TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
"""

# Created once every table has its columns (after the migrations): an index on a column an old file lacks
# would fail in SCHEMA. ``list``: the active jobs by state, the finished ones newest first (per owner for a
# non-admin); ``prune``: events by time, delivered alerts by when they were sent.
INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(ended_at);
CREATE INDEX IF NOT EXISTS jobs_owner_ended ON jobs(owner_uid, ended_at);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS alert_outbox_sent ON alert_outbox(sent_at) WHERE sent_at IS NOT NULL;
"""

# The alerts of a job's ending (the outbox rows of its terminal transition) and the states a job ends in.
ENDING_ALERTS = ("completed", "budget", "failed", "stopped")
TERMINAL = ("completed", "failed", "stopped")


def ensure_schema(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables that are missing and migrate an older file to ``SCHEMA_VERSION``.

    ``StoreError`` for a file of a newer schema than this version understands (``path`` names it).
    """
    fresh = not _has_table(db, "attempts")
    # executescript commits on its own: it cannot run inside a transaction.
    db.executescript(SCHEMA)
    with transaction(db):
        if fresh:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                       (str(SCHEMA_VERSION),))
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        version = int(row["value"]) if row is not None else 1
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema_version: {version} is newer than this ml-supervisor "
                             f"understands ({SCHEMA_VERSION}); upgrade ml-supervisor")
        if version < 2:
            _migrate_1_to_2(db)
        if version < 3:
            _migrate_2_to_3(db, os.getuid())
        if version < 4:
            # The executescript above created the (empty) outbox: nothing owed from before.
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '4')")
        if version < 5:
            # The executescript above created the (empty) schedules table: no schedules before.
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '5')")
        if version < 6:
            _migrate_5_to_6(db)
        if version < 7:
            _migrate_6_to_7(db)
    db.executescript(INDEXES)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


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


def _migrate_5_to_6(db: sqlite3.Connection) -> None:
    """Finished jobs keep their best checkpoint's facts in their row: taken from the alert of their ending,
    which carries them (the outbox, from schema 4; a job that ended before schema 4 keeps only its best path)."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)").fetchall()}
    for name, kind in (("best_score", "REAL"), ("best_step", "INTEGER"), ("best_monitor", "TEXT"),
                       ("pruned_at", "REAL")):
        if name not in columns:
            db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    marks = ", ".join("?" * len(TERMINAL))
    rows = db.execute(
        f"SELECT o.job_id, o.details FROM alert_outbox o JOIN jobs j ON j.id = o.job_id "
        f"WHERE j.state IN ({marks}) AND o.alert IN ({', '.join('?' * len(ENDING_ALERTS))}) ORDER BY o.event_id",
        [*TERMINAL, *ENDING_ALERTS]).fetchall()
    for r in rows:  # oldest first: a job ended, requeued and ended again keeps its last ending's facts
        facts = best_facts(_json_object(r["details"]))
        db.execute("UPDATE jobs SET best_score = ?, best_step = ?, best_monitor = ? WHERE id = ?",
                   (facts["best_score"], facts["best_step"], facts["best_monitor"], r["job_id"]))
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '6')")


def _migrate_6_to_7(db: sqlite3.Connection) -> None:
    """Attempts record their world size and accumulation (NULL for those from before: their config's)."""
    columns = {r["name"] for r in db.execute("PRAGMA table_info(attempts)").fetchall()}
    for name in ("world_size", "accumulate_grad_batches"):
        if name not in columns:
            db.execute(f"ALTER TABLE attempts ADD COLUMN {name} INTEGER")
    db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '7')")


def best_facts(details: dict[str, object]) -> dict[str, object]:
    """The best checkpoint's score, step and monitored metric from an ending alert's facts (None: not told)."""
    score, step, monitor = details.get("best_score"), details.get("best_step"), details.get("monitor")
    return {"best_score": float(score) if isinstance(score, (int, float)) and not isinstance(score, bool) else None,
            "best_step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "best_monitor": monitor if isinstance(monitor, str) else None}


def _json_object(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
