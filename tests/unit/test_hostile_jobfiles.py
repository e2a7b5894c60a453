"""Numbers and file-descriptor shortages in the files a trainer writes: never a crash, never a misreading.

Before: ``Infinity`` in a heartbeat raised ``OverflowError`` out of ``read_heartbeat`` (the job's polling
stopped), ``1e400`` as a time stopped the hang clock for good, and ``read_json`` read an existing file as
missing when the process was out of file descriptors.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.jobfiles.bounds import MAX_COUNT, bounded_int, clamped_count, finite_float
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.rules.hang import FUTURE_SKEW_S, check_hang
from supervisor.settings import HangConfig
from tests.support.harness import REPO

T = 1_700_000_000.0


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("field", ["time", "pid", "attempt", "started_at"])
@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400", "1" + "0" * 400, "true", '"soon"'])
def test_a_heartbeat_with_an_impossible_number_is_unreadable_not_an_error(tmp_path: Path, field: str,
                                                                         value: str) -> None:
    beat = {"pid": 42, "attempt": 1, "time": T, "started_at": T, "phase": "train", "step": 5}
    text = json.dumps(beat).replace(f'"{field}": {json.dumps(beat[field])}', f'"{field}": {value}')
    assert read_heartbeat(write(tmp_path / "heartbeat.json", text)) is None


@pytest.mark.parametrize(("value", "expected"), [("Infinity", MAX_COUNT), ("1e400", MAX_COUNT), ("-5", 0),
                                                 ("1" + "0" * 400, MAX_COUNT), ("NaN", 0), ("12.0", 12)])
def test_heartbeat_steps_are_clamped(tmp_path: Path, value: str, expected: int) -> None:
    text = f'{{"pid": 42, "attempt": 1, "time": {T}, "step": {value}, "epoch": {value}, ' \
           f'"step_time": 0.5, "metrics": {{"loss": 1e400, "big": {"1" + "0" * 400}, "ok": 0.5}}}}'
    beat = read_heartbeat(write(tmp_path / "heartbeat.json", text))
    assert beat is not None
    assert (beat.step, beat.epoch, beat.metrics) == (expected, expected, {"ok": 0.5})


@pytest.mark.parametrize("value", ["Infinity", "1e400", "-1"])
def test_an_infinite_step_time_is_not_accepted(tmp_path: Path, value: str) -> None:
    text = f'{{"pid": 42, "attempt": 1, "time": {T}, "step": 3, "max_step_time": {value}}}'
    assert read_heartbeat(write(tmp_path / "heartbeat.json", text)) is None


def test_a_heartbeat_far_in_the_future_does_not_stop_the_hang_clock() -> None:
    settings = HangConfig(startup_allowance=900.0, phase_allowance=600.0, multiple=5.0, min_timeout=60.0)
    beat = read_heartbeat_from({"pid": 42, "attempt": 1, "time": 1e12, "started_at": T, "phase": "train", "step": 5,
                                "max_step_time": 1.0})
    now = T + 2000
    verdict = check_hang(now=now, attempt_started_at=T, heartbeat=beat, slowest_step_s=1.0, setting="auto",
                         settings=settings)
    assert verdict.hung and verdict.silent_for_s == 2000
    # a clock stepped back by less than the allowed skew is still progress
    near = read_heartbeat_from({"pid": 42, "attempt": 1, "time": now + FUTURE_SKEW_S / 2, "started_at": T,
                                "phase": "train", "step": 5, "max_step_time": 1.0})
    assert not check_hang(now=now, attempt_started_at=T, heartbeat=near, slowest_step_s=1.0, setting="auto",
                          settings=settings).hung


def read_heartbeat_from(data: dict[str, object]) -> Heartbeat | None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        return read_heartbeat(write(Path(directory) / "heartbeat.json", json.dumps(data)))


@pytest.mark.parametrize("text", [
    '{"status": "completed", "time": 1e400, "pid": 7}',
    '{"status": "completed", "time": 5, "pid": Infinity}',
    '{"status": "completed", "time": 5, "pid": ' + "9" * 30 + "}",
])
def test_an_exit_record_with_an_impossible_number_is_unreadable(tmp_path: Path, text: str) -> None:
    assert read_exit_record(write(tmp_path / "exit.json", text)) is None


def test_an_exit_record_step_past_sqlite_is_clamped(tmp_path: Path) -> None:
    record = read_exit_record(write(tmp_path / "exit.json",
                                    '{"status": "completed", "time": 5, "pid": 7, "global_step": 1e300}'))
    assert record is not None and record.global_step == MAX_COUNT


def test_manifest_lines_with_impossible_numbers_are_skipped(tmp_path: Path) -> None:
    good = {"event": "save", "path": "/c/a.ckpt", "step": 10, "time": T, "attempt": 1}
    lines = [good,
             {**good, "path": "/c/b.ckpt", "step": float("inf")},
             {**good, "path": "/c/c.ckpt", "step": 10**30},
             {**good, "path": "/c/d.ckpt", "attempt": -1}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert [e.path for e in live_checkpoints(manifest, require_file=False)] == ["/c/a.ckpt"]


def test_the_bounds_helpers() -> None:
    assert bounded_int(3.0) == 3 and bounded_int(7) == 7
    for bad in (True, 2.5, float("inf"), -1, 2**60, "x", None, [1]):
        with pytest.raises(ValueError):
            bounded_int(bad)
    assert clamped_count(10**400) == MAX_COUNT and clamped_count("junk") == 0
    with pytest.raises(ValueError):
        finite_float("1e400")


def test_a_deeply_nested_json_file_reads_as_unreadable(tmp_path: Path) -> None:
    from supervisor.jobfiles.atomic import read_json, read_json_lines

    nested = "[" * 200_000 + "]" * 200_000
    assert read_json(write(tmp_path / "x.json", nested)) is None
    assert read_json_lines(write(tmp_path / "x.jsonl", nested + "\n" + '{"ok": 1}\n')) == [{"ok": 1}]


SHORTAGE = r"""
import json, os, resource, sys
from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.manifest import live_checkpoints
path = sys.argv[1]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
held = []
try:
    while True:
        held.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
outcome = {}
for name, reader in (("read_json", read_json), ("read_exit_record", read_exit_record),
                     ("live_checkpoints", lambda p: live_checkpoints(p + ".manifest", require_file=False))):
    try:
        outcome[name] = ["value", repr(reader(path))]
    except OSError as exc:
        outcome[name] = ["raised", exc.errno]
for fd in held:
    os.close(fd)
outcome["after"] = read_json(path)
print(json.dumps(outcome))
"""


def test_out_of_file_descriptors_is_an_error_to_retry_not_a_missing_file(tmp_path: Path) -> None:
    """Real EMFILE: a child process with a low fd limit uses every descriptor, then reads an existing exit record."""
    import errno

    path = write(tmp_path / "exit.json", '{"status": "completed", "time": 5, "pid": 7}')
    write(tmp_path / "exit.json.manifest", '{"event": "save", "path": "/c/a.ckpt", "step": 3}\n')
    proc = subprocess.run([sys.executable, "-c", SHORTAGE, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    outcome = json.loads(proc.stdout)
    assert outcome["read_json"] == ["raised", errno.EMFILE]
    assert outcome["read_exit_record"] == ["raised", errno.EMFILE]
    assert outcome["live_checkpoints"] == ["raised", errno.EMFILE]  # not "no checkpoints": a resume would abandon
    assert outcome["after"] == {"status": "completed", "time": 5, "pid": 7}


def test_a_link_planted_where_the_daemon_writes_a_stack_report_is_not_followed(tmp_path: Path) -> None:
    """Shared-server mode: the attempt dir is the job owner's; the daemon (root) writes py-spy's report there."""
    from supervisor.processes.stacks import _write_report

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "py-spy.txt").symlink_to(victim)
    _write_report(tmp_path / "py-spy.txt", "stacks\n")
    assert victim.read_text() == "precious\n"
    _write_report(tmp_path / "fresh.txt", "stacks\n")
    assert (tmp_path / "fresh.txt").read_text() == "stacks\n"


def test_a_trainer_file_that_is_a_link_is_unreadable(tmp_path: Path) -> None:
    """A user's attempt dir may hold a link to a file only root may read: the daemon never reads through it."""
    from supervisor.jobfiles.atomic import read_json, read_json_lines

    secret = tmp_path / "secret.json"
    secret.write_text('{"status": "completed", "error": "root only"}\n')
    (tmp_path / "exit.json").symlink_to(secret)
    (tmp_path / "manifest.jsonl").symlink_to(secret)
    assert read_json(tmp_path / "exit.json") is None
    assert read_json_lines(tmp_path / "manifest.jsonl") == []
    assert read_json(secret) == {"status": "completed", "error": "root only"}
