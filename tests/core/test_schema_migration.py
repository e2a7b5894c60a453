"""A daemon of this version adopts attempts started by the first cut (schema 1: monitor pids in columns).

The old database and attempt directory are built here the way the old code
wrote them; the "monitor" is a real live process, so adoption is real: the
local runner pins it with a pidfd and collects its end.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from supervisor.core import Supervisor
from supervisor.core.submit import SubmitRequest, prepare_job
from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.layout import JobLayout
from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState
from supervisor.settings import DaemonSettings
from supervisor.store import SCHEMA_VERSION, Store
from tests.support.harness import REPO, SUPPORT, write_config

# The jobs table of schemas 1 and 2 (no owner), as they created it.
V1_V2_JOBS_TABLE = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, end_reason TEXT,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, first_started_at REAL, ended_at REAL,
    job_dir TEXT NOT NULL, workdir TEXT NOT NULL, config_source TEXT NOT NULL, budget_s REAL,
    gpus_requested INTEGER NOT NULL DEFAULT 0, restarts INTEGER NOT NULL DEFAULT 0, wandb_run_id TEXT,
    next_start_at REAL, wait_reason TEXT, stop_intent TEXT, stop_deadline REAL, best_checkpoint TEXT,
    detail TEXT);
"""

# The first cut's attempts table (schema_version 1), as it created it.
V1_ATTEMPTS = """
CREATE TABLE attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id), n INTEGER NOT NULL, monitor_pid INTEGER, monitor_started REAL,
    pid INTEGER, pgid INTEGER, boot_id TEXT, gpus TEXT NOT NULL DEFAULT '[]', started_at REAL NOT NULL,
    ended_at REAL, exit_code INTEGER, signal TEXT, reason TEXT, detail TEXT, resumed_from TEXT,
    new_checkpoints INTEGER NOT NULL DEFAULT 0, global_step INTEGER, PRIMARY KEY (job_id, n)
);
"""


def _old_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, monitor: subprocess.Popen[bytes],
                   boot_id: str) -> tuple[Path, str]:
    """A state dir as the old daemon left it: one job running attempt 1 under ``monitor``."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SUPPORT), str(REPO)]))
    state = tmp_path / "state"
    (state / "jobs").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    path = write_config(work, "old")
    job, _cfg = prepare_job(SubmitRequest(config_path=str(path), cwd=str(work)), jobs_dir=state / "jobs",
                            trainer_module="fake_trainer", gpu_count=None, check_timeout=60)
    started = psutil.Process(monitor.pid).create_time()
    al = JobLayout(Path(job.job_dir)).attempt(1)
    al.dir.mkdir(parents=True)
    write_json_atomic(al.monitor_start, {"monitor_pid": monitor.pid, "trainer_pid": monitor.pid, "pgid": monitor.pid,
                                         "started_at": started, "boot_id": boot_id, "subreaper": True,
                                         "command": ["python", "-m", "fake_trainer"]})
    db = sqlite3.connect(state / "supervisor.db")
    with db:
        db.executescript(V1_V2_JOBS_TABLE + """
            CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job_id TEXT,
                attempt INTEGER, kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """ + V1_ATTEMPTS)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1'), ('boot_id', ?)", (boot_id,))
        now = time.time()
        db.execute("INSERT INTO jobs(id, name, state, created_at, updated_at, first_started_at, job_dir, workdir, "
                   "config_source) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                   (job.id, job.name, now, now, now, job.job_dir, job.workdir, job.config_source))
        db.execute("INSERT INTO attempts(job_id, n, monitor_pid, monitor_started, pid, pgid, boot_id, started_at) "
                   "VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
                   (job.id, monitor.pid, started, monitor.pid, monitor.pid, boot_id, now))
    db.close()
    return state, job.id


def test_an_attempt_of_the_old_schema_is_adopted_and_collected(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monitor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        state, job_id = _old_state_dir(tmp_path, monkeypatch, monitor, boot_id="boot-1")
        sup = Supervisor(DaemonSettings(state_dir=str(state), trainer_module="fake_trainer", tick_interval=0.2),
                         boot_id="boot-1")
        sup.open()
        try:
            assert sup.store is not None
            assert sup.store.get_meta("schema_version") == str(SCHEMA_VERSION)
            attempt = sup.store.last_attempt(job_id)
            assert attempt is not None
            assert attempt.runner_kind == "local"
            assert attempt.runner_state == {"monitor_pid": monitor.pid, "monitor_started": pytest.approx(
                psutil.Process(monitor.pid).create_time()), "trainer_pid": monitor.pid, "pgid": monitor.pid,
                "boot_id": "boot-1", "trainer_started": None,  # the old columns, plus what the runner read from
                "world_size": 1, "rank_pids": [monitor.pid]}
            # the old monitor.json (no trainer start time: that trainer is never signalled by pid alone)
            assert [e.kind for e in sup.store.events(job_id=job_id)] == ["adopted"]
            assert sup.store.get_job(job_id).state is JobState.RUNNING

            # The old monitor reports the trainer's end and exits: the adopted attempt is collected.
            al = JobLayout(Path(sup.store.get_job(job_id).job_dir)).attempt(1)
            write_exit_record(al.exit_record, ExitRecord(status="completed", time=time.time(), pid=monitor.pid,
                                                         reason="max_steps", global_step=20))
            write_json_atomic(al.monitor_exit, {"exit_code": 0, "signal": None, "ended_at": time.time(),
                                                "trainer_pid": monitor.pid, "leftovers_killed": []})
            monitor.kill()
            monitor.wait()
            sup.tick()
            job = sup.store.get_job(job_id)
            assert (job.state, job.end_reason) == (JobState.COMPLETED, "finished")
            ended = sup.store.last_attempt(job_id)
            assert ended is not None and ended.reason == Cause.COMPLETED and ended.global_step == 20
        finally:
            sup.close()
    finally:
        monitor.kill()
        monitor.wait()


def test_a_database_of_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    Store(path).set_meta("schema_version", str(SCHEMA_VERSION + 1))
    from supervisor.errors import StoreError

    with pytest.raises(StoreError, match=rf"supervisor.db: schema_version: {SCHEMA_VERSION + 1} is newer"):
        Store(path)


def test_migrated_rows_keep_their_old_columns_readable(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    db = sqlite3.connect(path)
    with db:
        db.executescript(V1_ATTEMPTS + "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO attempts(job_id, n, monitor_pid, monitor_started, pid, pgid, started_at, ended_at, "
                   "reason) VALUES ('j', 1, 11, 2.5, 12, 12, 1.0, 3.0, 'crash')")
    db.close()
    store = Store(path)
    (attempt,) = store.attempts("j")
    assert attempt.runner_state == {"monitor_pid": 11, "monitor_started": 2.5, "trainer_pid": 12, "pgid": 12}
    assert (attempt.pid, attempt.reason, attempt.runner_kind) == (12, "crash", "local")
    raw = sqlite3.connect(path).execute("SELECT monitor_pid, runner_state FROM attempts").fetchone()
    assert raw[0] == 11 and json.loads(raw[1])["monitor_pid"] == 11


# Schema 2 as it created its tables (the jobs table of schemas 1 and 2: no owner).
V2_JOBS = V1_V2_JOBS_TABLE + """
CREATE TABLE attempts (job_id TEXT NOT NULL REFERENCES jobs(id), n INTEGER NOT NULL,
    runner_kind TEXT NOT NULL DEFAULT 'local', runner_state TEXT NOT NULL DEFAULT '{}', pid INTEGER, boot_id TEXT,
    gpus TEXT NOT NULL DEFAULT '[]', started_at REAL NOT NULL, ended_at REAL, exit_code INTEGER, signal TEXT,
    reason TEXT, detail TEXT, resumed_from TEXT, new_checkpoints INTEGER NOT NULL DEFAULT 0, global_step INTEGER,
    PRIMARY KEY (job_id, n));
CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, job_id TEXT,
    attempt INTEGER, kind TEXT NOT NULL, message TEXT NOT NULL, data TEXT NOT NULL DEFAULT '{}');
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def test_jobs_of_schema_2_belong_to_the_daemons_user(tmp_path: Path) -> None:
    """Schema 3 gives jobs an owner (shared-server mode); every job from before was the daemon's user's."""
    path = tmp_path / "supervisor.db"
    db = sqlite3.connect(path)
    with db:
        db.executescript(V2_JOBS)
        db.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        for job_id in ("old-a", "old-b"):
            db.execute("INSERT INTO jobs(id, name, state, created_at, updated_at, job_dir, workdir, config_source) "
                       "VALUES (?, 'old', 'running', 1.0, 1.0, '/j', '/w', 'c.yaml')", (job_id,))
        db.execute("INSERT INTO events(time, job_id, kind, message) VALUES (1.0, 'old-a', 'submitted', 'm')")
    db.close()
    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) == "7"
    assert [(j.id, j.owner_uid) for j in store.list_jobs()] == [("old-a", os.getuid()), ("old-b", os.getuid())]
    assert store.get_job("old-a", owner_uid=os.getuid()).id == "old-a"
    assert [e.job_id for e in store.events(owner_uid=os.getuid())] == ["old-a"]
    assert store.events(owner_uid=os.getuid() + 1) == []
    from supervisor.errors import JobNotFound

    with pytest.raises(JobNotFound, match="no job 'old-a'"):
        store.get_job("old-a", owner_uid=os.getuid() + 1)
    Store(path)  # opening it again migrates nothing twice
    assert Store(path).get_meta("schema_version") == "7"


def test_a_schema_3_database_gets_an_empty_alert_outbox(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    Store(path).close()
    db = sqlite3.connect(path)
    with db:  # as a schema-3 daemon left it: no outbox table
        db.execute("DROP TABLE alert_outbox")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    db.close()

    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) == "7"
    assert store.pending_alerts() == []  # nothing owed from before the outbox
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(alert_outbox)")]
    assert columns == ["event_id", "job_id", "alert", "details", "sent_at"]
