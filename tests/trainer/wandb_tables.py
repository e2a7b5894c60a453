"""Read a ``wandb.Table`` back from an offline run file, for tests.

A logged table leaves two things in the run file: history items under its key
(``_type: table-file``, ``nrows``, ``path``, ...) and a ``run_table`` artifact
whose manifest lists the table's JSON and every image it holds, staged as local
files (under ``$WANDB_DATA_DIR/artifacts/staging``, which the tests point at a
temporary folder) until ``wandb sync`` uploads them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.alerts.wandb_offline_log import LogFormatError, read_records

FLUSH_TIMEOUT = 60.0


def finished_records(run_dir: Path, timeout: float = FLUSH_TIMEOUT) -> list[Any]:
    """The run file's records once its ``exit`` record is there (wandb-core writes after ``finish`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        files = list(run_dir.glob("run-*.wandb"))
        try:
            records = read_records(files[0]) if len(files) == 1 else []
        except LogFormatError:
            records = []  # caught mid-write
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{run_dir}: no complete run file after {timeout:.0f}s ({files})")
        time.sleep(0.2)


def logged_tables(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """Every table logged under ``key``, oldest first.

    Each is the history entry (``_type``, ``nrows``, ...) plus ``_step``, ``table``
    (the staged table JSON: ``columns``, ``data`` with ``image-file`` cells) and
    ``images`` (the staged image files of its artifact).
    """
    records = finished_records(run_dir)
    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"
                 and r.artifact.type == "run_table" and r.artifact.name.endswith(f"-{key}")]
    out = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        entry: dict[str, Any] = {}
        step = None
        for item in record.history.item:
            path = list(item.nested_key) or [item.key]
            if path == ["_step"]:
                step = json.loads(item.value_json)
            elif path[0] == key and len(path) == 2:
                entry[path[1]] = json.loads(item.value_json)
        if entry:
            artifact = artifacts[len(out)]
            contents = {c.path: Path(c.local_path) for c in artifact.manifest.contents}
            entry["_step"] = step
            entry["table"] = json.loads(contents[f"{key}.table.json"].read_text())
            entry["images"] = [p for name, p in sorted(contents.items()) if name.startswith("media/images/")]
            out.append(entry)
    return out
