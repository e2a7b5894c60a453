"""Schema 4 -> 5: a database of the schema before scheduled runs gets an empty ``schedules`` table, once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from supervisor.store import SCHEMA_VERSION, Store
from supervisor.store.schedules import SCHEDULE_FIELDS, ScheduleTable


def test_a_schema_4_database_gets_an_empty_schedules_table(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    Store(path).close()
    db = sqlite3.connect(path)
    with db:  # as a schema-4 daemon left it: no schedules table
        db.execute("DROP TABLE schedules")
        db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    db.close()

    store = Store(path)
    assert store.get_meta("schema_version") == str(SCHEMA_VERSION) and SCHEMA_VERSION >= 5  # later ones add more
    assert ScheduleTable(store).select() == []
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(schedules)")]
    assert columns == SCHEDULE_FIELDS
    assert Store(path).get_meta("schema_version") == str(SCHEMA_VERSION)  # opened again: nothing migrates twice
