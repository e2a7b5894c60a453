"""The queries that answer ``list``: active jobs by state, finished jobs a page at a time, counts, attempts.

Each is one indexed query whatever the number of jobs in the store (``schema.INDEXES``): the active jobs
through ``jobs_state``, the finished ones newest first through ``jobs_ended`` (``jobs_owner_ended`` for one
owner's), the attempts of a page of jobs through the attempts' primary key.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.rules.states import JobState
from supervisor.store.rows import AttemptRow, JobRow, attempt_from_row, job_from_row

ATTEMPTS_CHUNK = 500  # job ids per attempts query (SQLite takes at most 32766 parameters)


@dataclass(frozen=True)
class JobPage:
    """Finished jobs, newest end first: ``jobs`` are ``[offset, offset + limit)`` of the ``total`` that match."""

    jobs: list[JobRow]
    total: int
    offset: int
    limit: int | None


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


def active_jobs(db: sqlite3.Connection, *, owner_uid: int | None = None,
                states: Sequence[JobState] | None = None) -> list[JobRow]:
    """Jobs that have not finished (in ``states`` when given), oldest first."""
    wanted = [s.value for s in (states or list(JobState)) if not s.terminal]
    if not wanted:
        return []
    where, params = f"state IN ({_marks(wanted)})", list[Any](wanted)
    if owner_uid is not None:
        where, params = where + " AND owner_uid = ?", [*params, owner_uid]
    rows = db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created_at", params).fetchall()
    return [job_from_row(r) for r in rows]


def finished_where(*, since: float | None = None, before: float | None = None,
                   states: Sequence[JobState] | None = None, owner_uid: int | None = None,
                   newest_first: bool = False) -> tuple[str, list[Any]] | None:
    """The WHERE clause (and its parameters) of finished jobs ended in ``[since, before)``, in ``states``, of
    ``owner_uid``; None when ``states`` names no finished state. ``newest_first``: for a query ordered by
    ``ended_at`` with a limit (``+state`` keeps SQLite off the state index, so it walks ``jobs_ended``, or
    ``jobs_owner_ended`` for one owner, backwards and stops at the limit instead of sorting every finished
    job); else for a count (the state index covers it)."""
    wanted = [s.value for s in (states or list(JobState)) if s.terminal]
    if not wanted:
        return None
    where = ([f"+state IN ({_marks(wanted)})", "ended_at IS NOT NULL"] if newest_first
             else [f"state IN ({_marks(wanted)})"])
    params: list[Any] = list(wanted)
    if since is not None:
        where.append("ended_at >= ?")
        params.append(since)
    if before is not None:
        where.append("ended_at < ?")
        params.append(before)
    if owner_uid is not None:
        where.append("owner_uid = ?")
        params.append(owner_uid)
    return " AND ".join(where), params


def finished_page(db: sqlite3.Connection, *, limit: int | None = 50, offset: int = 0, since: float | None = None,
                  before: float | None = None, states: Sequence[JobState] | None = None,
                  owner_uid: int | None = None) -> JobPage:
    """A page of finished jobs, the latest to end first, and how many match (``limit`` None: all of them)."""
    counted = finished_where(since=since, before=before, states=states, owner_uid=owner_uid)
    listed = finished_where(since=since, before=before, states=states, owner_uid=owner_uid, newest_first=True)
    if counted is None or listed is None:
        return JobPage([], 0, offset, limit)
    where, params = counted
    total = int(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", params).fetchone()[0])
    if limit == 0 or offset >= total:
        return JobPage([], total, offset, limit)
    where, params = listed
    rows = db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY ended_at DESC LIMIT ? OFFSET ?",
                      [*params, -1 if limit is None else limit, offset]).fetchall()
    return JobPage([job_from_row(r) for r in rows], total, offset, limit)


def state_counts(db: sqlite3.Connection, *, owner_uid: int | None = None) -> dict[str, int]:
    """Jobs per state (only the states that have jobs)."""
    where, params = ("", []) if owner_uid is None else (" WHERE owner_uid = ?", [owner_uid])
    rows = db.execute(f"SELECT state, COUNT(*) AS n FROM jobs{where} GROUP BY state", params).fetchall()
    return {str(r["state"]): int(r["n"]) for r in rows}


def attempts_of(db: sqlite3.Connection, job_ids: Sequence[str]) -> dict[str, list[AttemptRow]]:
    """Each job's attempts, first first (a job without any maps to ``[]``)."""
    found: dict[str, list[AttemptRow]] = {job_id: [] for job_id in job_ids}
    ids = list(found)
    for start in range(0, len(ids), ATTEMPTS_CHUNK):
        chunk = ids[start:start + ATTEMPTS_CHUNK]
        rows = db.execute(f"SELECT * FROM attempts WHERE job_id IN ({_marks(chunk)}) ORDER BY job_id, n",
                          chunk).fetchall()
        for r in rows:
            found[r["job_id"]].append(attempt_from_row(r))
    return found
