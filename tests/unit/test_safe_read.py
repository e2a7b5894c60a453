"""The one reader of the files a trainer can write (issue 33): type, size and time bounded.

Real files of every hostile kind (FIFO, socket, directory, link, device, 50 GB sparse file) read by the
typed readers the daemon uses; the deadline's reader threads with an operation that never returns (an
``Event`` nobody sets: what a hung NFS read looks like from Python).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.jobfiles import deadline, safe_read
from supervisor.jobfiles.atomic import append_json_line, read_json, read_json_lines, read_json_lines_from
from supervisor.jobfiles.deadline import Deadlines, FileStalled
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start

T = 1_700_000_000.0
BEAT = {"pid": 42, "attempt": 1, "time": T, "started_at": T, "phase": "train", "step": 5}


@pytest.fixture(autouse=True)
def _fresh_log_memory() -> Iterator[None]:
    safe_read._logged.clear()
    yield
    deadline.disable()


def plant(path: Path, kind: str) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(50 * 2**30)
    elif kind == "directory":
        path.mkdir()
    elif kind == "link_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()
    return path


HOSTILE = ("fifo", "sparse", "directory", "link_dev_zero", "socket")


@pytest.mark.parametrize("kind", HOSTILE)
def test_every_typed_reader_reads_a_hostile_file_as_unreadable_at_once(tmp_path: Path, kind: str,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    readers = {"heartbeat.json": read_heartbeat, "exit.json": read_exit_record, "monitor.json": read_monitor_start,
               "monitor-exit.json": read_monitor_exit, "standby-ready.json": read_json, "slurm-end.json": read_json,
               "manifest.jsonl": lambda p: live_checkpoints(p, require_file=False) or None,
               "metrics.jsonl": lambda p: read_json_lines(p) or None}
    caplog.set_level(logging.WARNING, "ml_supervisor")
    for name, reader in readers.items():
        path = plant(tmp_path / name, kind)
        start = time.monotonic()
        assert reader(path) is None, name
        assert reader(path) is None, name  # read at every poll...
        assert time.monotonic() - start < 1.0, name  # at once (a FIFO's open does not wait for a writer)
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith(str(path))]
        assert len(said) == 1, (name, said)  # ...and said once
    assert read_json_lines_from(tmp_path / "manifest.jsonl", 0) == ([], 0)


def test_a_fifo_with_a_writer_that_never_writes_is_not_waited_on(tmp_path: Path) -> None:
    fifo = plant(tmp_path / "heartbeat.json", "fifo")
    writer = os.open(fifo, os.O_RDWR)  # a writer holds it open and never writes: a plain read would wait
    try:
        start = time.monotonic()
        assert read_heartbeat(fifo) is None
        assert time.monotonic() - start < 1.0
    finally:
        os.close(writer)


def test_a_file_over_its_cap_is_not_read_and_is_named_with_its_size(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ml_supervisor")
    beat = tmp_path / "heartbeat.json"
    beat.write_text(json.dumps({**BEAT, "metrics": {f"m{i}": 0.5 for i in range(20_000)}}))
    assert beat.stat().st_size > safe_read.cap_for(beat)  # type: ignore[operator]
    assert read_heartbeat(beat) is None
    said = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"heartbeat.json is not read: it is 0\.\d MiB, over the 0.2 MiB cap", m) for m in said), said
    # within the cap: read as before
    beat.write_text(json.dumps({**BEAT, "metrics": {f"m{i}": 0.5 for i in range(1000)}}))
    read = read_heartbeat(beat)
    assert read is not None and len(read.metrics) == 1000


def test_a_50_gb_sparse_file_costs_neither_time_nor_memory(tmp_path: Path) -> None:
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    for name in ("heartbeat.json", "exit.json", "manifest.jsonl", "metrics.jsonl", "other.json", "other.jsonl"):
        path = plant(tmp_path / name, "sparse")
        assert read_json(path) is None and read_json_lines(path) == []  # over every cap: not read at all
    # a log is read in chunks from an offset, whatever its size: one chunk, never the whole
    log = plant(tmp_path / "stdout.log", "sparse")
    chunk = safe_read.read_range(log, 10 * 2**30, 256 * 1024, total_cap=0)
    assert chunk == b"\0" * 256 * 1024
    assert time.monotonic() - start < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: under 50 MiB more


def test_json_lines_are_read_in_chunks_and_an_overlong_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "trials.jsonl"  # no kind's cap: the daemon's own files are read whole, a chunk at a time
    good = [{"n": i, "pad": "x" * 1000} for i in range(3000)]  # ~3 MiB: several chunks
    with open(path, "w") as f:
        f.write(json.dumps(good[0]) + "\n")
        f.write('{"n": -1, "junk": "' + "y" * (3 * safe_read.CHUNK) + '"}\n')  # longer than a chunk
        for line in good[1:]:
            f.write(json.dumps(line) + "\n")
        f.write('{"torn": ')  # a writer killed mid-line
    assert [line["n"] for line in read_json_lines(path)] == list(range(3000))
    # following from an offset: at most a chunk per call, always at a line's start
    offset, seen = 0, []
    for _ in range(100):
        lines, after = read_json_lines_from(path, offset)
        seen += [line["n"] for line in lines]
        if after == offset:
            break
        offset = after
    assert seen == list(range(3000))
    assert offset == path.stat().st_size - len('{"torn": ')


def test_a_log_that_belongs_to_someone_else_is_not_read(tmp_path: Path) -> None:
    log = tmp_path / "stdout.log"
    log.write_text("hello\n")
    assert safe_read.read_range(log, 0, 100, total_cap=0, owners=(os.getuid(),)) == b"hello\n"
    assert safe_read.read_range(log, 0, 100, total_cap=0, owners=(os.getuid() + 12345,)) is None


def test_a_listing_is_bounded_and_never_through_a_link(tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i}").touch()
    assert len(safe_read.list_dir(folder, limit=10) or []) == 10
    assert sorted(safe_read.list_dir(folder) or []) == sorted(f"f{i}" for i in range(30))
    (tmp_path / "link").symlink_to(folder)
    assert safe_read.list_dir(tmp_path / "link") is None
    assert safe_read.list_dir(tmp_path / "missing") is None


def test_appending_to_a_fifo_or_a_link_fails_at_once_instead_of_waiting(tmp_path: Path) -> None:
    fifo = plant(tmp_path / "manifest.jsonl", "fifo")
    start = time.monotonic()
    with pytest.raises(OSError):
        append_json_line(fifo, {"event": "save"})
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "alerts.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        append_json_line(tmp_path / "alerts.jsonl", {"x": 1})
    assert victim.read_text() == "precious\n"
    assert time.monotonic() - start < 1.0


def test_an_atomic_write_replaces_a_planted_temp_link_instead_of_following_it(tmp_path: Path) -> None:
    from supervisor.jobfiles.atomic import write_json_atomic

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "exit.json"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.symlink_to(victim)
    write_json_atomic(target, {"status": "completed"})
    assert victim.read_text() == "precious\n"
    assert read_json(target) == {"status": "completed"}


# -- the deadline ---------------------------------------------------------------------------------------------
def test_an_operation_that_never_returns_stalls_its_directory_only() -> None:
    d = Deadlines(timeout_s=0.2, max_threads=4)
    hung = threading.Event()
    start = time.monotonic()
    with pytest.raises(FileStalled) as stalled:
        d.run("/nfs/jobs/a/attempts/1/heartbeat.json", hung.wait)
    assert 0.15 < time.monotonic() - start < 1.0
    assert stalled.value.filename == "/nfs/jobs/a/attempts/1/heartbeat.json"
    assert d.stalled() == ["/nfs/jobs/a/attempts/1"]
    start = time.monotonic()
    with pytest.raises(FileStalled):  # the same directory: at once, and no second thread stuck on it
        d.run("/nfs/jobs/a/attempts/1/exit.json", lambda: b"{}")
    assert time.monotonic() - start < 0.05
    assert d.run("/local/jobs/b/attempts/1/exit.json", lambda: b"{}") == b"{}"  # another directory answers
    hung.set()  # the server answers again
    for _ in range(100):
        if not d.stalled():
            break
        time.sleep(0.01)
    assert d.run("/nfs/jobs/a/attempts/1/exit.json", lambda: b"ok") == b"ok"


def test_the_reader_threads_are_bounded_and_errors_reach_the_caller() -> None:
    d = Deadlines(timeout_s=0.05, max_threads=2)
    hung = threading.Event()
    for n in range(2):
        with pytest.raises(FileStalled):
            d.run(f"/nfs/{n}/f", hung.wait)
    start = time.monotonic()
    with pytest.raises(FileStalled, match="every reader thread"):  # both stuck: fail at once, start no third
        d.run("/local/x/f", lambda: 1)
    assert time.monotonic() - start < 0.05
    assert threading.active_count() < 50
    hung.set()
    time.sleep(0.1)

    def boom() -> None:
        raise PermissionError(13, "no")

    with pytest.raises(PermissionError):
        d.run("/local/x/f", boom)
    assert d.run("/local/x/f", lambda: d.run("/local/y/g", lambda: "nested runs inline")) == "nested runs inline"


def test_the_readers_use_the_deadline_once_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beat = tmp_path / "heartbeat.json"
    beat.write_text(json.dumps(BEAT))
    deadline.enable(timeout_s=0.2)
    assert read_heartbeat(beat) is not None  # read on a reader thread, answered in time
    hung = threading.Event()
    real_pread = os.pread

    def hanging_pread(fd: int, size: int, offset: int) -> bytes:
        hung.wait()
        return real_pread(fd, size, offset)

    monkeypatch.setattr(safe_read.os, "pread", hanging_pread)
    start = time.monotonic()
    with pytest.raises(FileStalled):  # not None: the job waits, its heartbeat is not taken for missing
        read_heartbeat(beat)
    with pytest.raises(FileStalled):
        read_exit_record(tmp_path / "exit.json")
    assert time.monotonic() - start < 1.0
    hung.set()


def test_a_forked_child_starts_its_own_reader_threads() -> None:
    """A fork copies no thread: a child that inherited "one thread started" would wait on nobody."""
    d = Deadlines(timeout_s=1.0, max_threads=1)
    assert d.run("/x/f", lambda: 1) == 1  # the parent's reader thread exists now
    pid = os.fork()
    if pid == 0:  # the child: answered by a thread of its own, in time
        try:
            os._exit(0 if d.run("/x/f", lambda: 2) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
