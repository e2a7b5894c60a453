"""Scheduled runs in the store (schema 5, table ``schedules``): what to submit, when, and how far each has got.

A schedule keeps the config *text* it was created with (as a submit does: the daemon never
re-reads a user's file), its rule (``at`` a time or a ``cron`` line, in a time zone), the
misfire policy, the next fire time, and ``firing_at``: a fire time whose job is being
submitted. Each job it starts records ``{"schedule": id, "fire_time": t}`` in its
``submitted`` event, in the job's own transaction; a daemon killed between the two finds
the job by that event (``job_for_fire``) instead of submitting it twice.

Only the loop thread writes (``ScheduleTable`` uses the ``Store``'s per-thread connections).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

from supervisor.errors import JobNotFound
from supervisor.store.database import Store
from supervisor.store.sql import transaction


class ScheduleState(StrEnum):
    ACTIVE = "active"  # fires at next_run_at
    DONE = "done"  # an `at` schedule that fired (or was skipped)
    REMOVED = "removed"  # unscheduled by its owner


@dataclass
class ScheduleRow:
    """One row of ``schedules``."""

    id: str
    name: str
    kind: str  # "at" | "cron"
    spec: str  # the time as given (ISO) or the cron line
    timezone: str  # an IANA name: the zone the spec is read in
    misfire: str  # "run_once" | "skip": a fire time missed while the daemon was down
    config_path: str
    cwd: str
    config_text: str
    created_at: float
    updated_at: float
    owner_uid: int
    overrides: list[str] = field(default_factory=list)
    job_name: str | None = None  # --name for each run (None: the config's name)
    state: ScheduleState = ScheduleState.ACTIVE
    next_run_at: float | None = None
    firing_at: float | None = None  # a fire time whose job is being submitted
    last_run_at: float | None = None  # the fire time of the latest run started
    last_job_id: str | None = None
    runs: int = 0
    skipped: int = 0  # fire times missed and not run (misfire: skip, or the extra ones of run_once)
    last_error: str | None = None  # why the latest fire started no job


SCHEDULE_FIELDS = [f.name for f in fields(ScheduleRow)]


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "overrides" in out:
        out["overrides"] = json.dumps(list(out["overrides"]))
    if "state" in out:
        out["state"] = ScheduleState(out["state"]).value
    return out


def _decode(row: sqlite3.Row) -> ScheduleRow:
    values = {k: row[k] for k in SCHEDULE_FIELDS}
    values["overrides"] = json.loads(values["overrides"] or "[]")
    values["state"] = ScheduleState(values["state"])
    return ScheduleRow(**values)


class ScheduleTable:
    """The ``schedules`` table of a ``Store`` (same database, same per-thread connections)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def _conn(self) -> sqlite3.Connection:
        return self._store._conn()

    def insert(self, row: ScheduleRow) -> None:
        values = _encode(row.__dict__)
        with transaction(self._conn()) as db:
            db.execute(f"INSERT INTO schedules({', '.join(SCHEDULE_FIELDS)}) "
                       f"VALUES ({', '.join('?' * len(SCHEDULE_FIELDS))})", [values[k] for k in SCHEDULE_FIELDS])

    def get(self, schedule_id: str, *, owner_uid: int | None = None) -> ScheduleRow:
        """The schedule, by id or a unique prefix of it; ``JobNotFound`` (one line) otherwise.

        ``owner_uid``: only that user's schedules exist.
        """
        db = self._conn()
        mine, params = ("", []) if owner_uid is None else (" AND owner_uid = ?", [owner_uid])
        row = db.execute("SELECT * FROM schedules WHERE id = ?" + mine, [schedule_id, *params]).fetchone()
        if row is None:
            like = schedule_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = db.execute("SELECT * FROM schedules WHERE id LIKE ? ESCAPE '\\'" + mine, [like, *params]).fetchall()
            if len(rows) > 1:
                raise JobNotFound(f"schedule id {schedule_id[:60]!r} is ambiguous: "
                                  + ", ".join(r["id"] for r in rows[:5]))
            row = rows[0] if rows else None
        if row is None:
            raise JobNotFound(f"no schedule {schedule_id[:60]!r} (see `supervisorctl schedules`)")
        return _decode(row)

    def select(self, *, states: tuple[ScheduleState, ...] | None = None, owner_uid: int | None = None
             ) -> list[ScheduleRow]:
        """Schedules, oldest first; only those in ``states`` / of ``owner_uid`` when given."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params += [s.value for s in states]
        if owner_uid is not None:
            where.append("owner_uid = ?")
            params.append(owner_uid)
        rows = self._conn().execute(f"SELECT * FROM schedules WHERE {' AND '.join(where)} ORDER BY created_at, id",
                                    params).fetchall()
        return [_decode(r) for r in rows]

    def update(self, schedule_id: str, *, now: float, **changes: Any) -> ScheduleRow:
        """Set ``changes`` (and ``updated_at``); the row as it is now."""
        values = _encode({**changes, "updated_at": now})
        sets = ", ".join(f"{k} = ?" for k in values)
        with transaction(self._conn()) as db:
            cur = db.execute(f"UPDATE schedules SET {sets} WHERE id = ?", [*values.values(), schedule_id])
            if cur.rowcount == 0:
                raise JobNotFound(f"no schedule {schedule_id!r}")
        return self.get(schedule_id)

    def job_for_fire(self, schedule_id: str, fire_time: float) -> str | None:
        """The job a fire of this schedule already started (its ``submitted`` event says so), or None."""
        row = self._conn().execute(
            "SELECT job_id FROM events WHERE kind = 'submitted' AND json_extract(data, '$.schedule') = ? "
            "AND json_extract(data, '$.fire_time') = ? ORDER BY id DESC LIMIT 1", (schedule_id, fire_time)).fetchone()
        return None if row is None else str(row["job_id"])
