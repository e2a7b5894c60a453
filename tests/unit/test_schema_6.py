"""Schema 5 -> 6 (issue 35): finished jobs get their best checkpoint's facts from the alert of their ending,
``pruned_at``, and the indexes ``list`` and ``prune`` use; nothing else changes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from supervisor.rules.states import JobState
from supervisor.store import SCHEMA_VERSION, Store
from supervisor.store.schema import SCHEMA

# The jobs table of schemas 3 to 5, as they created it.
V5_JOBS_TABLE = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, end_reason TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, first_started_at REAL, ended_at REAL,
    job_dir TEXT NOT NULL, workdir TEXT NOT NULL, config_source TEXT NOT NULL, budget_s REAL,
    gpus_requested INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0, wandb_run_id TEXT,
    next_start_at REAL, wait_reason TEXT, stop_intent TEXT, stop_deadline REAL, best_checkpoint TEXT,
    detail TEXT, owner_uid INTEGER NOT NULL);
"""


def _schema_5(path: Path) -> None:
    """A schema-5 file: a job that completed (its ending's alert delivered), one that failed twice (requeued
    in between: its last ending counts), one that runs, one that ended before the outbox existed."""
    db = sqlite3.connect(path)
    with db:
        db.executescript(V5_JOBS_TABLE)
        db.executescript(SCHEMA)  # every other table as it was (jobs exists: left as schema 5 made it)
        db.execute("INSERT INTO meta VALUES ('schema_version', '5')")
        for job_id, state, best in (("done", "completed", "/j/done/step=15.ckpt"), ("twice", "failed", "/j/t/b"),
                                    ("live", "running", None), ("ancient", "completed", "/j/a/x.ckpt")):
            db.execute("INSERT INTO jobs(id, name, state, created_at, updated_at, ended_at, job_dir, workdir, "
                       "config_source, best_checkpoint, owner_uid) VALUES (?, ?, ?, 1, 2, ?, ?, '/w', '/c', ?, 0)",
                       (job_id, job_id, state, None if state == "running" else 2.0, f"/j/{job_id}", best))
        endings = [("done", "completed", {"best_score": 0.25, "best_step": 15, "monitor": "val_loss"}),
                   ("twice", "failed", {"best_score": 9.0, "best_step": 1, "monitor": "loss"}),
                   ("twice", "failed", {"best_score": 0.5, "best_step": 40, "monitor": "loss"}),
                   ("live", "restart", {"resumed_score": 3.0})]
        for n, (job_id, alert, details) in enumerate(endings, start=1):
            db.execute("INSERT INTO events(id, time, job_id, kind, message) VALUES (?, 2, ?, ?, '')",
                       (n, job_id, alert))
            db.execute("INSERT INTO alert_outbox(event_id, job_id, alert, details, sent_at) VALUES (?, ?, ?, ?, 3)",
                       (n, job_id, alert, json.dumps(details)))
    db.close()


def test_a_schema_5_database_keeps_its_jobs_and_gains_the_best_facts_and_the_indexes(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    _schema_5(path)
    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) and SCHEMA_VERSION >= 6
    done, twice, live, ancient = (store.get_job(j) for j in ("done", "twice", "live", "ancient"))
    assert (done.best_score, done.best_step, done.best_monitor) == (0.25, 15, "val_loss")
    assert (twice.best_score, twice.best_step) == (0.5, 40)  # its last ending's
    assert (live.best_score, live.state) == (None, JobState.RUNNING)
    assert (ancient.best_checkpoint, ancient.best_score) == ("/j/a/x.ckpt", None)
    assert all(j.pruned_at is None for j in (done, twice, live, ancient))
    indexes = {r[0] for r in store._conn().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_state", "jobs_ended", "jobs_owner_ended", "events_time", "alert_outbox_sent"} <= indexes
    assert [j.id for j in store.finished_jobs().jobs] and store.job_counts() == {"completed": 2, "failed": 1,
                                                                                  "running": 1}
    store.close()
    assert Store(path).get_meta("schema_version") == str(SCHEMA_VERSION)  # opened again: nothing migrates twice


def test_an_ending_keeps_the_best_facts_its_alert_tells(tmp_path: Path) -> None:
    from supervisor.store import JobRow, OutboxAlert

    store = Store(tmp_path / "supervisor.db")
    store.insert_job(JobRow(id="j", name="j", state=JobState.QUEUED, created_at=1, updated_at=1, job_dir="/j",
                            workdir="/w", config_source="/c"), message="submitted")
    store.transition("j", JobState.STARTING, now=2, message="")
    store.transition("j", JobState.RUNNING, now=3, message="")
    job = store.transition("j", JobState.COMPLETED, now=4, message="", best_checkpoint="/j/b",
                           alert=OutboxAlert("completed", {"best_checkpoint": "/j/b", "best_score": 0.1,
                                                           "best_step": 7, "monitor": "acc"}))
    assert (job.best_score, job.best_step, job.best_monitor, job.ended_at) == (0.1, 7, "acc", 4)
