"""The trainer never waits on its own files either (issue 33, item 3): a FIFO, a link or a directory where it
writes, or a directory on a filesystem that does not answer (a FUSE mount that never answers: a hung NFS
server), costs heartbeats and stack dumps as a full disk does, never the training loop.

Before: a FIFO at ``metrics.jsonl`` or ``stacks.txt`` held the trainer in ``open()`` for a reader that never
came, and a heartbeat write on a hung mount held the step that wrote it for good.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import time
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import append_json_line
from supervisor.jobfiles.deadline import Deadlines
from supervisor.jobfiles.heartbeat import read_heartbeat
from tests.support.stalling_fs import StallingFs, available
from trainer import progress
from trainer.progress import HeartbeatWriter
from trainer.signals import SignalState


@pytest.mark.parametrize("kind", ["fifo", "link", "directory"])
def test_a_hostile_metrics_file_costs_the_line_not_the_step(tmp_path: Path, kind: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics.jsonl"
    if kind == "fifo":
        os.mkfifo(metrics)
    elif kind == "link":
        (tmp_path / "elsewhere").write_text("")
        metrics.symlink_to(tmp_path / "elsewhere")
    else:
        metrics.mkdir()
    writer = HeartbeatWriter(tmp_path / "heartbeat.json", metrics, attempt=1, started_at=time.time())
    writer.metrics = {"loss": 0.5}
    start = time.monotonic()
    writer.set_phase("train", step=3)
    assert time.monotonic() - start < 1.0
    assert writer.failed_writes == 1 and "cannot write the heartbeat" in capsys.readouterr().err
    beat = read_heartbeat(tmp_path / "heartbeat.json")  # the beat itself went out before the metrics line
    assert beat is not None and beat.step == 3
    if kind == "link":
        assert (tmp_path / "elsewhere").read_text() == ""  # not written through the link


def test_a_fifo_in_place_of_the_stacks_file_sends_the_stacks_to_stderr(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "stacks.txt")
    state = SignalState(tmp_path / "stacks.txt")
    start = time.monotonic()
    try:
        state.register_stack_dump()  # waited for the FIFO's reader before
        assert time.monotonic() - start < 1.0
    finally:
        faulthandler.unregister(signal.SIGUSR2)


def test_a_fifo_in_place_of_the_manifest_fails_the_append_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "manifest.jsonl")
    start = time.monotonic()
    with pytest.raises(OSError):
        append_json_line(tmp_path / "manifest.jsonl", {"event": "save"})  # the save fails, said why
    assert time.monotonic() - start < 1.0


@pytest.mark.skipif(available() is not None, reason=f"FUSE: {available()}")
def test_a_heartbeat_on_a_disk_that_does_not_answer_costs_beats_not_steps(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           capsys: pytest.CaptureFixture[str]
                                                                           ) -> None:
    monkeypatch.setattr(progress, "_WRITES", Deadlines(0.3, max_threads=2))
    attempt_dir = tmp_path / "attempt"
    attempt_dir.mkdir()
    writer = HeartbeatWriter(attempt_dir / "heartbeat.json", attempt_dir / "metrics.jsonl", attempt=1,
                             started_at=time.time(), interval=0.0)
    writer.set_phase("train", step=1)
    assert writer.failed_writes == 0
    with StallingFs(attempt_dir):
        start = time.monotonic()
        writer.step_done(2)  # the write does not answer: given up after the deadline
        assert 0.2 < time.monotonic() - start < 2.0
        start = time.monotonic()
        for step in range(3, 50):  # while it does not answer, every later beat is given up at once
            writer.step_done(step)
        assert time.monotonic() - start < 0.5
        assert writer.failed_writes == 48
        assert "does not answer" in capsys.readouterr().err
    for _ in range(50):  # the mount is gone: the stuck write returns (an error) and the next beat lands
        writer.step_done(60)
        beat = read_heartbeat(attempt_dir / "heartbeat.json")
        if beat is not None and beat.step == 60:
            break
        time.sleep(0.05)
    beat = read_heartbeat(attempt_dir / "heartbeat.json")
    assert beat is not None and beat.step == 60
