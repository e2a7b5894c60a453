"""Schema 6 -> 7 (issue 28): attempts gain ``world_size`` and ``accumulate_grad_batches`` (elastic DDP);
the attempts from before keep theirs unknown (NULL: their config's), nothing else changes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.store import SCHEMA_VERSION, AttemptRow, Store
from supervisor.store.schema import SCHEMA

NEW_COLUMNS = "    world_size INTEGER,\n    accumulate_grad_batches INTEGER,\n"


def test_a_schema_6_database_keeps_its_attempts_and_gains_the_shape_columns(tmp_path: Path) -> None:
    assert NEW_COLUMNS in SCHEMA
    path = tmp_path / "supervisor.db"
    db = sqlite3.connect(path)
    with db:
        db.executescript(SCHEMA.replace(NEW_COLUMNS, ""))  # the attempts table as schema 6 made it
        db.execute("INSERT INTO meta VALUES ('schema_version', '6')")
        db.execute("INSERT INTO jobs(id, name, state, created_at, updated_at, job_dir, workdir, config_source, "
                   "owner_uid) VALUES ('j', 'j', 'running', 1, 2, '/j', '/w', '/c', 0)")
        db.execute("INSERT INTO attempts(job_id, n, started_at, gpus) VALUES ('j', 1, 1.0, '[0, 1]')")
    db.close()
    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) == "7"
    old = store.last_attempt("j")
    assert old is not None and old.gpus == [0, 1] and (old.world_size, old.accumulate_grad_batches) == (None, None)
    store.insert_attempt(AttemptRow(job_id="j", n=2, started_at=2.0, gpus=[0], world_size=1,
                                    accumulate_grad_batches=2))
    new = store.last_attempt("j")
    assert new is not None and (new.n, new.world_size, new.accumulate_grad_batches) == (2, 1, 2)
    store.close()
    assert Store(path).get_meta("schema_version") == "7"  # opened again: nothing migrates twice
