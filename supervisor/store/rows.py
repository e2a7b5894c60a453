"""The store's rows as dataclasses, and their mapping to and from SQLite columns.

JSON columns (an attempt's ``gpus`` and ``runner_state``, event ``data``, outbox
``details``) are encoded here, so the rest of the daemon sees plain Python values.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field, fields
from typing import Any

from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState


@dataclass
class JobRow:
    """One row of ``jobs``: a submitted job and where it stands."""

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
    # The best checkpoint's facts, kept when the job ends (from its ending's alert): the list shows a finished
    # job from its row alone, without reading its manifest.
    best_score: float | None = None
    best_step: int | None = None
    best_monitor: str | None = None
    pruned_at: float | None = None  # when `supervisorctl prune` removed the job's files (its best kept)


@dataclass
class AttemptRow:
    """One row of ``attempts``: one run of a job's trainer, numbered ``n`` from 1."""

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
    world_size: int | None = None  # ranks it ran (None: before schema 7)
    accumulate_grad_batches: int | None = None  # elastic DDP: the accumulation it ran with (None: the config's)

    @property
    def live(self) -> bool:
        """Whether the attempt has not ended (as far as the store knows)."""
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
    """One row of ``events``: something that happened to a job (or to the daemon, without ``job_id``)."""

    id: int
    time: float
    job_id: str | None
    attempt: int | None
    kind: str
    message: str
    data: dict[str, Any]


JOB_FIELDS = [f.name for f in fields(JobRow)]
ATTEMPT_FIELDS = [f.name for f in fields(AttemptRow)]


def job_values(job: JobRow) -> dict[str, Any]:
    """Every column of ``job``, as stored."""
    return job_values_partial({k: getattr(job, k) for k in JOB_FIELDS})


def job_values_partial(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to a job, as stored; ``ValueError`` for a field the row does not have."""
    unknown = set(changes) - set(JOB_FIELDS)
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    return {k: (v.value if isinstance(v, JobState) else v) for k, v in changes.items()}


def attempt_values(changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to an attempt (or all its fields), as stored; ``ValueError`` for an unknown field."""
    unknown = set(changes) - set(ATTEMPT_FIELDS)
    if unknown:
        raise ValueError(f"unknown attempt fields: {sorted(unknown)}")
    return {k: (json.dumps(v) if k in ("gpus", "runner_state") else v) for k, v in changes.items()}


def job_from_row(row: sqlite3.Row) -> JobRow:
    """The ``JobRow`` of a ``jobs`` row."""
    values = {k: row[k] for k in JOB_FIELDS}
    values["state"] = JobState(values["state"])
    return JobRow(**values)


def attempt_from_row(row: sqlite3.Row) -> AttemptRow:
    """The ``AttemptRow`` of an ``attempts`` row."""
    values = {k: row[k] for k in ATTEMPT_FIELDS}
    values["gpus"] = json.loads(values["gpus"] or "[]")
    values["runner_state"] = json.loads(values["runner_state"] or "{}")
    return AttemptRow(**values)


def event_from_row(row: sqlite3.Row) -> EventRow:
    """The ``EventRow`` of an ``events`` row."""
    return EventRow(id=row["id"], time=row["time"], job_id=row["job_id"], attempt=row["attempt"], kind=row["kind"],
                    message=row["message"], data=json.loads(row["data"]))


def outbox_from_row(row: sqlite3.Row) -> OutboxAlert:
    """The ``OutboxAlert`` of an ``alert_outbox`` row."""
    return OutboxAlert(alert=row["alert"], details=json.loads(row["details"]), job_id=row["job_id"],
                       event_id=row["event_id"])
