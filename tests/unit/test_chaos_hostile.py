"""The hostile-files injection of the chaos soak (``tests/support/chaos_hostile.py``): each form in place of each
job file reads as unreadable (or, for the mount that never answers, as stalled) and is undone cleanly."""

from __future__ import annotations

import json
from pathlib import Path
from random import Random

import pytest

from supervisor.jobfiles import deadline
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.heartbeat import read_heartbeat
from tests.support.chaos_hostile import FORMS, HostileFiles, job_files
from tests.support.harness import wait_for
from tests.support.stalling_fs import available


def _read_or_none(path: Path) -> object:
    try:
        return read_heartbeat(path)
    except FileStalled:
        return None


BEAT = {"pid": 42, "attempt": 1, "time": 1.7e9, "started_at": 1.7e9, "phase": "train", "step": 5}


@pytest.mark.parametrize("form", FORMS)
def test_each_form_is_planted_and_undone(tmp_path: Path, form: str) -> None:
    if form == "stall" and available() is not None:
        pytest.skip(f"FUSE: {available()}")
    for path in job_files(tmp_path, 1):
        path.parent.mkdir(parents=True, exist_ok=True)
    heartbeat = job_files(tmp_path, 1)[0]
    for seed in range(20):  # a form at some file, the heartbeat among them
        injection = HostileFiles(tmp_path, 1, Random(seed), forms=(form,))
        if injection.path in (heartbeat, heartbeat.parent):
            break
    heartbeat.write_text(json.dumps(BEAT))
    deadline.enable(timeout_s=0.2)
    try:
        injection.plant()
        if form == "stall":
            with pytest.raises(FileStalled):
                read_heartbeat(heartbeat)
        else:
            assert read_heartbeat(heartbeat) is None
        injection.undo()
        if form == "stall":  # the stuck read returns (aborted), the directory answers again: the real file
            assert wait_for(lambda: _read_or_none(heartbeat), timeout=5, what="the heartbeat to be read again")
        else:
            assert not heartbeat.exists() and not heartbeat.is_symlink()
    finally:
        injection.undo()
        deadline.disable()
