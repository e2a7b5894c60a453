"""The file contracts between daemon and trainer: atomic writes, jsonl, manifest, heartbeat, exit record."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.jobfiles.atomic import (
    append_json_line,
    read_json,
    read_json_lines,
    read_json_lines_from,
    write_json_atomic,
)
from supervisor.jobfiles.exitrecord import STATUSES, ExitRecord, read_exit_record, write_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat, write_heartbeat
from supervisor.jobfiles.layout import JobLayout, manifest_path
from supervisor.jobfiles.manifest import (
    CheckpointEntry,
    abandon_after,
    live_checkpoints,
    rank_best,
    rank_newest,
    record_remove,
    record_save,
)

T = 1_700_000_000.0

# A writer that rewrites one file as fast as it can; each version's padding length
# depends on its number, so a reader can tell a whole version from a mix.
WRITER = textwrap.dedent("""
    import sys
    from supervisor.jobfiles.atomic import write_json_atomic
    path, durable = sys.argv[1], sys.argv[2] == "1"
    k = 0
    while True:
        k += 1
        write_json_atomic(path, {"k": k, "pad": "x" * (100_000 + (k % 13) * 7_919)}, durable=durable)
        if k == 1:
            print("wrote", flush=True)
""")


def whole_version(data: bytes) -> int:
    """The version number of a complete file; fails the test on a partial or mixed one."""
    obj = json.loads(data)
    assert len(obj["pad"]) == 100_000 + (obj["k"] % 13) * 7_919, "a mix of two versions"
    return int(obj["k"])


def start_writer(path: Path, durable: bool) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "1" if durable else "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "wrote\n"
    return proc


# --- atomic writes

def test_readers_never_see_a_partial_write(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    proc = start_writer(path, durable=False)
    try:
        seen = set()
        deadline = time.monotonic() + 0.6
        reads = 0
        while time.monotonic() < deadline:
            seen.add(whole_version(path.read_bytes()))
            reads += 1
    finally:
        proc.kill()
        proc.wait()
    assert reads > 20 and len(seen) > 5, "the writer did not race the reader"


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "not-durable"])
def test_a_writer_killed_mid_write_leaves_the_old_or_the_new(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "exit.json"
    write_json_atomic(path, {"k": 0, "pad": "x" * 100_000})
    versions = []
    for i in range(6):
        proc = start_writer(path, durable)
        time.sleep(0.003 * i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        versions.append(whole_version(path.read_bytes()))
    assert all(k >= 1 for k in versions)
    # Whatever temp files the kills left behind are hidden, never the published name.
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} == {"exit.json"}


def test_threads_writing_the_same_file_never_mix(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            for k in range(offset, offset + 400, 2):
                write_json_atomic(path, {"k": k, "pad": "x" * (100_000 + (k % 13) * 7_919)}, durable=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(offset,)) for offset in (0, 1)]
    for t in threads:
        t.start()
    reads = 0
    while any(t.is_alive() for t in threads):
        if path.exists():
            whole_version(path.read_bytes())
            reads += 1
    for t in threads:
        t.join()
    assert not errors, errors
    assert whole_version(path.read_bytes()) in (398, 399)
    assert reads > 0


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"v": float("nan")})  # JSON has no NaN
    assert read_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["x.json"]


@pytest.mark.parametrize("content", [None, b"", b"{not json", b"\xff\xfe", b'{"a": 1'], ids=repr)
def test_read_json_tolerates_garbage(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    assert read_json(path) is None


# --- json lines

def test_every_cut_of_a_jsonl_file_reads_as_its_whole_lines(tmp_path: Path) -> None:
    full = tmp_path / "full.jsonl"
    events = [{"event": "save", "path": f"/c/e{i}.ckpt", "step": i * 10, "score": 1 / (i + 1)} for i in range(5)]
    for event in events:
        append_json_line(full, event)
    data = full.read_bytes()
    line_ends = [i for i, byte in enumerate(data) if byte == ord("\n")]
    assert len(line_ends) == len(events)
    cut = tmp_path / "cut.jsonl"
    for size in range(len(data) + 1):
        cut.write_bytes(data[:size])
        whole = sum(1 for end in line_ends if end < size)
        assert read_json_lines(cut) == events[:whole], f"cut at byte {size}"


def test_garbage_lines_are_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_json_line(path, {"n": 1})
    with open(path, "ab") as f:
        f.write(b"\x00\x00garbage\n\n   \n")
    append_json_line(path, {"n": 2})
    assert read_json_lines(path) == [{"n": 1}, {"n": 2}]
    assert read_json_lines(tmp_path / "missing.jsonl") == []


def test_an_append_after_a_torn_line_is_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    append_json_line(path, {"n": 1})
    with open(path, "ab") as f:
        f.write(b'{"n": 2, "pa')  # a writer killed mid-line
    assert read_json_lines(path) == [{"n": 1}]
    append_json_line(path, {"n": 3})
    assert read_json_lines(path) == [{"n": 1}, {"n": 3}]


# --- the manifest

class Checkpoints:
    """A checkpoint directory whose files are real (their content does not matter here)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "checkpoints"
        self.dir.mkdir()
        self.manifest = manifest_path(self.dir)
        self.clock = T

    def save(self, name: str, step: int, score: float | None = None, *, kind: str = "topk",
             monitor: str | None = "val_loss", mode: str = "min", attempt: int = 1) -> CheckpointEntry:
        path = self.dir / name
        path.write_bytes(name.encode() + str(step).encode())
        self.clock += 1
        entry = CheckpointEntry(path=str(path), step=step, epoch=step // 10, monitor=monitor, score=score, mode=mode,
                                size=path.stat().st_size, time=self.clock, attempt=attempt, kind=kind)
        record_save(self.manifest, entry)
        return entry

    def live(self, **kwargs: bool) -> list[str]:
        return [Path(e.path).name for e in live_checkpoints(self.manifest, **kwargs)]


def test_live_checkpoints_follow_saves_and_removes(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    a = c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.4)
    c.save("e2.ckpt", 30, 0.3)
    assert c.live() == ["e0.ckpt", "e1.ckpt", "e2.ckpt"]
    assert live_checkpoints(c.manifest)[0] == a
    record_remove(c.manifest, str(c.dir / "e1.ckpt"), attempt=1)
    assert c.live() == ["e0.ckpt", "e2.ckpt"]


def test_a_vanished_file_is_dropped_only_when_files_are_required(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.4)
    (c.dir / "e0.ckpt").unlink()
    assert c.live() == ["e1.ckpt"]
    assert c.live(require_file=False) == ["e0.ckpt", "e1.ckpt"]


def test_last_saved_twice_keeps_its_latest_entry(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    c.save("last.ckpt", 10, 0.5, kind="last")
    c.save("e1.ckpt", 20, 0.4)
    latest = c.save("last.ckpt", 25, 0.4, kind="last")
    entries = live_checkpoints(c.manifest)
    assert [Path(e.path).name for e in entries] == ["e0.ckpt", "e1.ckpt", "last.ckpt"]
    assert entries[-1] == latest


def test_abandon_lines_drop_their_paths_and_a_later_save_brings_one_back(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.4)
    append_json_line(c.manifest, {"event": "abandon", "paths": [str(c.dir / "e1.ckpt")], "resumed_from": None,
                                  "step": 10, "time": T, "attempt": 2})
    assert c.live() == ["e0.ckpt"]
    c.save("e1.ckpt", 20, 0.45, attempt=2)  # the rewound run reaches the same step again
    assert c.live() == ["e0.ckpt", "e1.ckpt"]
    assert live_checkpoints(c.manifest)[-1].attempt == 2


def test_malformed_manifest_lines_are_skipped(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    for bad in ({"event": "save", "path": str(c.dir / "x.ckpt")},  # no step
                {"event": "save", "path": str(c.dir / "y.ckpt"), "step": "ten"},
                [1, 2], 7, "save", {"event": "abandon", "paths": str(c.dir / "e0.ckpt")},
                {"event": "rename", "path": str(c.dir / "e0.ckpt")}):
        append_json_line(c.manifest, bad)
    c.save("e1.ckpt", 20, None)
    assert c.live(require_file=False) == ["e0.ckpt", "e1.ckpt"]


def entry(name: str, step: int, score: float | None, *, kind: str = "topk", mode: str = "min",
          monitor: str | None = "val_loss", saved: float | None = None) -> CheckpointEntry:
    return CheckpointEntry(path=f"/c/{name}", step=step, epoch=0, monitor=monitor, score=score, mode=mode, size=1,
                           time=saved if saved is not None else T + step, attempt=1, kind=kind)


def names(entries: list[CheckpointEntry]) -> list[str]:
    return [e.path.rsplit("/", 1)[1] for e in entries]


@pytest.mark.parametrize(("entries", "expected"), [
    pytest.param([entry("a", 10, 0.5), entry("b", 20, 0.2), entry("c", 30, 0.9)], ["b", "a", "c"], id="min"),
    pytest.param([entry("a", 10, 0.5, mode="max"), entry("b", 20, 0.2, mode="max"), entry("c", 30, 0.9, mode="max")],
                 ["c", "a", "b"], id="max"),
    pytest.param([entry("a", 10, None), entry("b", 20, 0.7), entry("c", 30, None)], ["b", "c", "a"],
                 id="unscored-last-newest-first"),
    pytest.param([entry("a", 10, None, monitor=None), entry("c", 30, None, monitor=None),
                  entry("b", 20, None, monitor=None)], ["c", "b", "a"], id="no-monitor-newest-first"),
    pytest.param([entry("top", 20, 0.3), entry("last", 25, 0.3, kind="last")], ["top", "last"],
                 id="tie-topk-beats-last"),
    pytest.param([entry("sig", 27, 0.3, kind="signal"), entry("top", 20, 0.3)], ["top", "sig"],
                 id="tie-topk-beats-signal"),
    pytest.param([entry("a", 10, 0.3), entry("b", 20, 0.3)], ["b", "a"], id="tie-later-step-wins"),
    pytest.param([entry("a", 20, 0.3, saved=T + 5), entry("b", 20, 0.3, saved=T + 9)], ["b", "a"],
                 id="tie-same-step-later-save-wins"),
    pytest.param([entry("last", 30, 0.1, kind="last"), entry("top", 20, 0.3)], ["last", "top"],
                 id="a-better-last-still-wins"),
])
def test_rank_best(entries: list[CheckpointEntry], expected: list[str]) -> None:
    assert names(rank_best(entries)) == expected
    assert names(rank_best(reversed(entries))) == expected  # the input order does not matter


def test_rank_newest_is_by_step_then_save_time() -> None:
    entries = [entry("top", 30, 0.1, saved=T + 1), entry("old", 10, 0.0), entry("last", 30, 0.5, kind="last",
                                                                                  saved=T + 2)]
    assert names(rank_newest(entries)) == ["last", "top", "old"]


def test_abandon_after_moves_the_later_timeline_aside(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    resume = c.save("e1.ckpt", 20, 0.2)
    c.save("e2.ckpt", 30, 0.4)
    c.save("last.ckpt", 35, 0.4, kind="last")
    moved = abandon_after(c.manifest, resume.path, attempt=3)
    assert moved == [str(c.dir / "e2.ckpt"), str(c.dir / "last.ckpt")]
    assert sorted(os.listdir(c.dir / "abandoned" / "3")) == ["e2.ckpt", "last.ckpt"]
    assert not (c.dir / "e2.ckpt").exists() and not (c.dir / "last.ckpt").exists()
    assert c.live(require_file=False) == ["e0.ckpt", "e1.ckpt"]
    last_line = read_json_lines(c.manifest)[-1]
    assert (last_line["event"], last_line["resumed_from"], last_line["step"], last_line["attempt"]) == (
        "abandon", resume.path, 20, 3)


def test_abandon_after_records_a_later_file_that_is_already_gone(tmp_path: Path) -> None:
    c = Checkpoints(tmp_path)
    resume = c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.2)
    (c.dir / "e1.ckpt").unlink()
    assert abandon_after(c.manifest, resume.path, attempt=2) == [str(c.dir / "e1.ckpt")]
    assert c.live(require_file=False) == ["e0.ckpt"]


def test_abandon_after_takes_a_relative_resume_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.2)
    monkeypatch.chdir(c.dir)
    assert abandon_after(c.manifest, "e0.ckpt", attempt=2) == [str(c.dir / "e1.ckpt")]


@pytest.mark.parametrize("resume", ["newest", "same-step-as-newest", "not-in-manifest"])
def test_abandon_after_is_a_no_op(tmp_path: Path, resume: str) -> None:
    c = Checkpoints(tmp_path)
    c.save("e0.ckpt", 10, 0.5)
    c.save("e1.ckpt", 20, 0.2)
    c.save("last.ckpt", 20, 0.2, kind="last")
    path = {"newest": c.dir / "last.ckpt", "same-step-as-newest": c.dir / "e1.ckpt",
            "not-in-manifest": tmp_path / "elsewhere.ckpt"}[resume]
    before = c.manifest.read_bytes()
    assert abandon_after(c.manifest, path, attempt=2) == []
    assert c.manifest.read_bytes() == before
    assert not (c.dir / "abandoned").exists()
    assert c.live() == ["e0.ckpt", "e1.ckpt", "last.ckpt"]


# --- heartbeat and exit record

def test_heartbeat_round_trip(tmp_path: Path) -> None:
    path = JobLayout(tmp_path).attempt(2).heartbeat
    path.parent.mkdir(parents=True)
    beat = Heartbeat(pid=4242, attempt=2, time=T + 5, started_at=T, phase="train", step=120, epoch=3,
                     step_time=0.021, max_step_time=0.05, metrics={"train_loss": 0.31, "lr": 1e-3})
    write_heartbeat(path, beat)
    assert read_heartbeat(path) == beat


def test_heartbeat_with_a_nan_metric_is_written_without_it(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat.json"
    write_heartbeat(path, Heartbeat(pid=1, attempt=1, time=T, started_at=T,
                                    metrics={"loss": float("nan"), "grad": float("inf"), "acc": 0.5}))
    beat = read_heartbeat(path)
    assert beat is not None and beat.metrics == {"acc": 0.5}


@pytest.mark.parametrize(("content", "expected_metrics"), [
    ('{"pid": 1, "attempt": 1, "time": 5}', {}),
    ('{"pid": 1, "attempt": 1, "time": 5, "metrics": [1, 2]}', {}),
    ('{"pid": 1, "attempt": 1, "time": 5, "metrics": {"a": "x", "b": null, "c": 2, "d": "nan"}}', {"c": 2.0}),
], ids=["minimal", "metrics-not-a-mapping", "odd-metric-values"])
def test_heartbeat_tolerates_odd_fields(tmp_path: Path, content: str, expected_metrics: dict[str, float]) -> None:
    path = tmp_path / "heartbeat.json"
    path.write_text(content)
    beat = read_heartbeat(path)
    assert beat is not None
    assert (beat.pid, beat.started_at, beat.phase, beat.metrics) == (1, 5.0, "train", expected_metrics)


@pytest.mark.parametrize("content", [None, "", "{", "[1, 2]", "42", '{"attempt": 1, "time": 5}',
                                     '{"pid": "abc", "attempt": 1, "time": 5}', '{"pid": 1, "attempt": 1}',
                                     '{"pid": 1, "attempt": 1, "time": 5, "step_time": "slow"}'], ids=repr)
def test_heartbeat_garbage_reads_as_none(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "heartbeat.json"
    if content is not None:
        path.write_text(content)
    assert read_heartbeat(path) is None


@pytest.mark.parametrize("record", [
    ExitRecord(status="completed", time=T, pid=7, global_step=400, epoch=9, reason="max_epochs"),
    ExitRecord(status="signal", time=T, pid=7, global_step=120, signal="SIGTERM", checkpoint="/c/sig.ckpt"),
    ExitRecord(status="exception", time=T, pid=7, exception={"type": "RuntimeError", "message": "CUDA error",
                                                             "traceback": "Traceback (most recent call last):\n..."}),
    ExitRecord(status="config_error", time=T, pid=7, message="job.yaml: model.class_path: is required"),
], ids=lambda r: r.status)
def test_exit_record_round_trip(tmp_path: Path, record: ExitRecord) -> None:
    path = JobLayout(tmp_path).attempt(1).exit_record
    path.parent.mkdir(parents=True)
    write_exit_record(path, record)
    assert read_exit_record(path) == record
    on_disk = json.loads(path.read_text())  # the documented JSON, not a pickle of the dataclass
    assert on_disk["status"] == record.status and on_disk["pid"] == 7 and on_disk["time"] == T


def test_only_a_completed_exit_record_is_completion(tmp_path: Path) -> None:
    path = tmp_path / "exit.json"
    seen = {}
    for status in STATUSES:
        write_exit_record(path, ExitRecord(status=status, time=T, pid=7))
        read = read_exit_record(path)
        assert read is not None
        seen[status] = read.completed
    assert seen == {"completed": True, "exception": False, "signal": False, "config_error": False, "diverged": False}


@pytest.mark.parametrize("content", [None, "", "{", "[]", '{"status": "finished", "time": 1, "pid": 1}',
                                     '{"status": "completed", "time": "later", "pid": 1}',
                                     '{"status": "completed", "time": 1, "pid": [1]}'], ids=repr)
def test_exit_record_garbage_reads_as_none(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "exit.json"
    if content is not None:
        path.write_text(content)
    assert read_exit_record(path) is None


def test_the_layout_is_the_documented_one(tmp_path: Path) -> None:
    job = JobLayout(tmp_path / "jobs" / "j1")
    attempt = job.attempt(3)
    assert job.manifest == job.checkpoints / "manifest.jsonl" == manifest_path(job.checkpoints)
    assert attempt.dir == job.attempts / "3"
    assert {p.name for p in (attempt.stdout, attempt.stderr, attempt.heartbeat, attempt.exit_record)} == {
        "stdout.log", "stderr.log", "heartbeat.json", "exit.json"}
    assert job.config.name == "config.yaml" and job.config.parent == job.root



def test_following_a_jsonl_file_reads_each_complete_line_once(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    assert read_json_lines_from(path, 0) == ([], 0)  # not there yet
    append_json_line(path, {"n": 1})
    lines, offset = read_json_lines_from(path, 0)
    assert lines == [{"n": 1}] and offset == path.stat().st_size
    with open(path, "ab") as f:
        f.write(b'{"n": 2}\n{"n": 3')  # the second line is still being written
    lines, offset2 = read_json_lines_from(path, offset)
    assert lines == [{"n": 2}]
    with open(path, "ab") as f:
        f.write(b"}\n")
    lines, offset3 = read_json_lines_from(path, offset2)
    assert lines == [{"n": 3}] and offset3 == path.stat().st_size
    assert read_json_lines_from(path, offset3) == ([], offset3)
