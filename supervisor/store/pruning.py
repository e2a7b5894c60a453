"""The SQL of ``supervisorctl prune``: a finished job's rows, old events, delivered alerts.

Never a live job's rows or events, never an alert still owed (``sent_at`` NULL) nor the event it is owed for.
Each function runs in the caller's transaction (the loop thread's, in batches); the ``count_*`` ones only read,
so a dry run counts exactly what the real run deletes (given the same store).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.rules.states import TERMINAL_STATES

TERMINAL = tuple(sorted(s.value for s in TERMINAL_STATES))
_TERMINAL_MARKS = ", ".join("?" * len(TERMINAL))

# An event that may go once it is old enough: not a live job's (a live job's history is what its restart
# policy reads), not one an unsent alert is owed for. Parameters: the live states (the terminal ones' complement
# is not listed: a job id no row names any more, e.g. a refused submit's, is no live job's).
_PRUNABLE_EVENT = (f"e.time < ? AND (e.job_id IS NULL OR e.job_id NOT IN "
                   f"(SELECT id FROM jobs WHERE state NOT IN ({_TERMINAL_MARKS}))) "
                   "AND NOT EXISTS (SELECT 1 FROM alert_outbox o WHERE o.event_id = e.id AND o.sent_at IS NULL)")


@dataclass(frozen=True)
class PruneCounts:
    """What went with one job: its attempts, events and alerts, and its row (``deleted``, or ``kept`` marked
    pruned when its best checkpoint stays)."""

    attempts: int
    events: int
    alerts: int
    row: str


def job_row_counts(db: sqlite3.Connection, job_id: str) -> tuple[int, int, int, bool]:
    """(attempts, events, alerts, an alert still owed) of a job: what pruning it would delete."""
    def count(sql: str) -> int:
        return int(db.execute(sql, (job_id,)).fetchone()[0])

    return (count("SELECT COUNT(*) FROM attempts WHERE job_id = ?"),
            count("SELECT COUNT(*) FROM events WHERE job_id = ?"),
            count("SELECT COUNT(*) FROM alert_outbox WHERE job_id = ?"),
            count("SELECT COUNT(*) FROM alert_outbox WHERE job_id = ? AND sent_at IS NULL") > 0)


def prune_job_rows(db: sqlite3.Connection, job_id: str, *, ended_at: float | None, now: float,
                   keep_row: bool) -> PruneCounts | None:
    """Delete a finished job's alerts, events and attempts, then its row (or mark it pruned: ``keep_row``).

    None, and nothing deleted, unless the job is still finished, ended at ``ended_at`` (not restarted since the
    prune was planned) and owes no unsent alert.
    """
    row = db.execute("SELECT state, ended_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row["state"] not in TERMINAL or row["ended_at"] != ended_at:
        return None
    if db.execute("SELECT 1 FROM alert_outbox WHERE job_id = ? AND sent_at IS NULL LIMIT 1", (job_id,)).fetchone():
        return None
    alerts = db.execute("DELETE FROM alert_outbox WHERE job_id = ?", (job_id,)).rowcount
    events = db.execute("DELETE FROM events WHERE job_id = ?", (job_id,)).rowcount
    attempts = db.execute("DELETE FROM attempts WHERE job_id = ?", (job_id,)).rowcount
    if keep_row:
        db.execute("UPDATE jobs SET pruned_at = COALESCE(pruned_at, ?) WHERE id = ?", (now, job_id))
    else:
        db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
    return PruneCounts(attempts=attempts, events=events, alerts=alerts, row="kept" if keep_row else "deleted")


def prune_events(db: sqlite3.Connection, before: float, *, batch: int) -> tuple[int, int]:
    """Delete up to ``batch`` prunable events older than ``before`` (oldest first) and the delivered alerts of
    those events; (events, alerts) deleted."""
    ids = [r[0] for r in db.execute(f"SELECT e.id FROM events e WHERE {_PRUNABLE_EVENT} ORDER BY e.id LIMIT ?",
                                    (before, *TERMINAL, batch)).fetchall()]
    if not ids:
        return 0, 0
    marks = ", ".join("?" * len(ids))
    alerts = db.execute(f"DELETE FROM alert_outbox WHERE event_id IN ({marks}) AND sent_at IS NOT NULL",
                        ids).rowcount
    events = db.execute(f"DELETE FROM events WHERE id IN ({marks})", ids).rowcount
    return events, alerts


def prune_alerts(db: sqlite3.Connection, before: float, *, batch: int) -> int:
    """Delete up to ``batch`` outbox alerts delivered before ``before``; how many."""
    return db.execute("DELETE FROM alert_outbox WHERE event_id IN (SELECT event_id FROM alert_outbox "
                      "WHERE sent_at IS NOT NULL AND sent_at < ? ORDER BY sent_at LIMIT ?)",
                      (before, batch)).rowcount


def count_prunable(db: sqlite3.Connection, *, events_before: float | None, alerts_before: float | None,
                   excluding: Sequence[str] = ()) -> tuple[int, int]:
    """(events, alerts) a prune with these cutoffs deletes after the jobs ``excluding`` went (with their own
    events and alerts): the events ``prune_events`` takes, the alerts ``prune_alerts`` takes plus the delivered
    alerts of those events."""
    skip = json.dumps(list(excluding))
    not_skipped = "(SELECT value FROM json_each(?))"
    events = 0
    if events_before is not None:
        events = int(db.execute(f"SELECT COUNT(*) FROM events e WHERE {_PRUNABLE_EVENT} "
                                f"AND (e.job_id IS NULL OR e.job_id NOT IN {not_skipped})",
                                (events_before, *TERMINAL, skip)).fetchone()[0])
    terms: list[str] = []
    params: list[float | str] = []
    if alerts_before is not None:
        terms.append("o.sent_at < ?")
        params.append(alerts_before)
    if events_before is not None:
        terms.append(f"o.event_id IN (SELECT e.id FROM events e WHERE {_PRUNABLE_EVENT})")
        params.extend([events_before, *TERMINAL])
    alerts = 0
    if terms:
        alerts = int(db.execute(f"SELECT COUNT(*) FROM alert_outbox o WHERE o.sent_at IS NOT NULL "
                                f"AND o.job_id NOT IN {not_skipped} AND ({' OR '.join(terms)})",
                                (skip, *params)).fetchone()[0])
    return events, alerts
