"""Choosing the resume checkpoint, with real zip files (torch.save's format) and real manifests."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from supervisor.jobfiles.manifest import (
    CheckpointEntry,
    abandon_after,
    live_checkpoints,
    record_remove,
    record_save,
)
from supervisor.rules.resume import NON_FINITE, ResumeChoice, choose_resume, verify_checkpoint

T = 1_700_000_000.0


def write_checkpoint(path: Path, payload: bytes = b"", *, compress: int = zipfile.ZIP_STORED,
                     with_pickle: bool = True) -> int:
    """A zip laid out like torch.save's (``<name>/data.pkl``, storages under ``<name>/data/``); returns its size."""
    prefix = path.stem
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        if with_pickle:
            archive.writestr(f"{prefix}/data.pkl", b"\x80\x02}q\x00." + payload[:16])
        archive.writestr(f"{prefix}/data/0", payload or os.urandom(4096))
        archive.writestr(f"{prefix}/version", b"3\n")
    return path.stat().st_size


def member_data_offset(path: Path, member_suffix: str) -> tuple[int, int]:
    """Where a member's (stored or compressed) bytes start in the file, and how many there are."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len = int.from_bytes(f.read(2), "little")
        extra_len = int.from_bytes(f.read(2), "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0xFF]))


def entry_for(path: Path, size: int, *, step: int = 10, score: float | None = 0.5, kind: str = "topk",
              finite: bool = True, monitor: str | None = "val_loss", mode: str = "min") -> CheckpointEntry:
    return CheckpointEntry(path=str(path), step=step, epoch=step // 10, monitor=monitor, score=score, mode=mode,
                           size=size, time=T + step, attempt=1, kind=kind, finite=finite)


# --- verify_checkpoint: one real file per way of being broken

def _good(p: Path) -> tuple[Path, int]:
    return p, write_checkpoint(p)


def _missing(p: Path) -> tuple[Path, int]:
    return p, 5000


def _truncated(p: Path) -> tuple[Path, int]:
    write_checkpoint(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, 0  # the manifest size would catch it first; check the zip test on its own


def _truncated_size_known(p: Path) -> tuple[Path, int]:
    size = write_checkpoint(p)
    with open(p, "r+b") as f:
        f.truncate(size - 100)
    return p, size


def _flipped_stored(p: Path) -> tuple[Path, int]:
    size = write_checkpoint(p)
    offset, length = member_data_offset(p, "data/0")
    flip_byte(p, offset + length // 2)
    return p, size


def _flipped_deflated(p: Path) -> tuple[Path, int]:
    size = write_checkpoint(p, b"weights " * 4000, compress=zipfile.ZIP_DEFLATED)
    offset, length = member_data_offset(p, "data/0")
    flip_byte(p, offset + length // 2)
    return p, size


def _not_a_zip(p: Path) -> tuple[Path, int]:
    p.write_bytes(b"PK but not really a zip archive\n" * 100)
    return p, p.stat().st_size


def _size_mismatch(p: Path) -> tuple[Path, int]:
    size = write_checkpoint(p)
    with open(p, "ab") as f:
        f.write(b"\0" * 24)  # zipfile itself would still read this archive
    return p, size


def _no_size_in_manifest(p: Path) -> tuple[Path, int]:
    write_checkpoint(p)
    return p, 0


def _no_pickle(p: Path) -> tuple[Path, int]:
    return p, write_checkpoint(p, with_pickle=False)


def _directory(p: Path) -> tuple[Path, int]:
    p.mkdir()
    return p, 0


def _empty(p: Path) -> tuple[Path, int]:
    p.write_bytes(b"")
    return p, 0


VERIFY_CASES: list[tuple[str, Callable[[Path], tuple[Path, int]], str | None]] = [
    ("good", _good, None),
    ("good-without-manifest-size", _no_size_in_manifest, None),
    ("missing", _missing, "missing"),
    ("truncated", _truncated, "not a valid zip archive (File is not a zip file)"),
    ("truncated-size-known", _truncated_size_known, "size {actual} bytes, the manifest says {size}"),
    ("flipped-byte-stored-member", _flipped_stored, "bad CRC in member c/data/0"),
    ("not-a-zip", _not_a_zip, "not a valid zip archive (File is not a zip file)"),
    ("size-mismatch", _size_mismatch, "size {actual} bytes, the manifest says {size}"),
    ("zip-without-data-pkl", _no_pickle, "not a torch checkpoint (no data.pkl in the archive)"),
    ("directory", _directory, "not a regular file"),
    ("empty-file", _empty, "not a valid zip archive (File is not a zip file)"),
]


@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in VERIFY_CASES], ids=[c[0] for c in VERIFY_CASES])
def test_verify_checkpoint(tmp_path: Path, make: Callable[[Path], tuple[Path, int]], expected: str | None) -> None:
    path, size = make(tmp_path / "c.ckpt")
    actual = path.stat().st_size if path.is_file() else 0
    reason = verify_checkpoint(entry_for(path, size))
    assert reason == (expected.format(actual=actual, size=size) if expected else None)


def test_flipped_byte_in_a_deflated_member_is_rejected(tmp_path: Path) -> None:
    # Depending on where the flip lands, inflate fails or the CRC does: either way, rejected.
    path, size = _flipped_deflated(tmp_path / "c.ckpt")
    reason = verify_checkpoint(entry_for(path, size))
    assert reason is not None
    assert reason == "bad CRC in member c/data/0" or reason.startswith("corrupt zip archive (error: ")


def test_flipped_byte_in_the_central_directory_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.ckpt"
    size = write_checkpoint(path)
    with zipfile.ZipFile(path) as archive:
        first = archive.infolist()[0]
    data = path.read_bytes()
    central = data.rfind(b"PK\x01\x02", 0)  # the last central directory record
    assert central > first.header_offset
    flip_byte(path, central + 16)  # inside its CRC-32 field
    reason = verify_checkpoint(entry_for(path, size))
    assert reason is not None and reason.startswith("bad CRC in member c/")


# --- choose_resume over a real manifest

class Job:
    """A checkpoint directory with its manifest, filled the way the trainer fills it."""

    def __init__(self, root: Path, monitor: str | None = "val_loss", mode: str = "min") -> None:
        self.dir = root / "checkpoints"
        self.dir.mkdir()
        self.manifest = self.dir / "manifest.jsonl"
        self.monitor = monitor
        self.mode = mode

    def save(self, name: str, step: int, score: float | None, *, kind: str = "topk", finite: bool = True,
             attempt: int = 1) -> str:
        path = self.dir / name
        size = write_checkpoint(path, os.urandom(512))
        record_save(self.manifest, CheckpointEntry(
            path=str(path), step=step, epoch=step // 10, monitor=self.monitor, score=score, mode=self.mode,
            size=size, time=T + step, attempt=attempt, kind=kind, finite=finite))
        return str(path)

    def entries(self) -> list[CheckpointEntry]:
        return live_checkpoints(self.manifest)


def corrupt(path: str) -> None:
    offset, length = member_data_offset(Path(path), "data/0")
    flip_byte(Path(path), offset + length // 2)


def crc_reason(path: str) -> str:
    return f"bad CRC in member {Path(path).stem}/data/0"


def test_best_takes_the_lowest_score(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.9)
    best = job.save("e1.ckpt", 20, 0.3)
    job.save("e2.ckpt", 30, 0.5)
    job.save("last.ckpt", 30, 0.5, kind="last")
    assert choose_resume(job.entries(), "best") == ResumeChoice(best, job.entries()[1], "best", ())


def test_best_in_max_mode_takes_the_highest_score(tmp_path: Path) -> None:
    job = Job(tmp_path, monitor="val_acc", mode="max")
    job.save("e0.ckpt", 10, 0.7)
    best = job.save("e1.ckpt", 20, 0.9)
    job.save("last.ckpt", 25, None, kind="last")
    choice = choose_resume(job.entries(), "best")
    assert (choice.path, choice.rule) == (best, "best")


def test_best_falls_back_to_the_next_best_when_corrupt(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.9)
    broken = job.save("e1.ckpt", 20, 0.3)
    second = job.save("e2.ckpt", 30, 0.5)
    corrupt(broken)
    choice = choose_resume(job.entries(), "best")
    assert (choice.path, choice.rule, choice.skipped) == (second, "best, fallback: next best",
                                                         ((broken, crc_reason(broken)),))


def test_best_without_monitor_is_the_newest(tmp_path: Path) -> None:
    job = Job(tmp_path, monitor=None)
    job.save("e0.ckpt", 10, None)
    newest = job.save("e1.ckpt", 20, None)
    assert choose_resume(job.entries(), "best").path == newest


def test_best_reaches_unscored_entries_after_every_scored_one(tmp_path: Path) -> None:
    job = Job(tmp_path)
    scored = job.save("e0.ckpt", 10, 0.4)
    unscored = job.save("sig.ckpt", 15, None, kind="signal")
    corrupt(scored)
    choice = choose_resume(job.entries(), "best")
    assert (choice.path, choice.skipped) == (unscored, ((scored, crc_reason(scored)),))


def test_last_takes_the_newest(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.2)
    job.save("last.ckpt", 10, 0.2, kind="last")
    job.save("e1.ckpt", 20, 0.6)
    last = job.save("last.ckpt", 25, 0.6, kind="last")  # saved twice: the later line wins
    choice = choose_resume(job.entries(), "last")
    assert (choice.path, choice.entry.step if choice.entry else None, choice.rule) == (last, 25, "last")


def test_last_falls_back_to_the_next_newest_when_truncated(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.2)
    previous = job.save("e1.ckpt", 20, 0.6)
    last = job.save("last.ckpt", 25, 0.6, kind="last")
    with open(last, "r+b") as f:
        f.truncate(100)
    choice = choose_resume(job.entries(), "last")
    assert choice.path == previous
    assert choice.rule == "last, fallback: next newest"
    assert choice.skipped[0][0] == last and choice.skipped[0][1].startswith("size 100 bytes, the manifest says ")


def test_last_keeps_a_non_finite_checkpoint_when_asked_by_name(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.2)
    nan = job.save("last.ckpt", 20, None, kind="last", finite=False)
    assert choose_resume(job.entries(), "last").path == nan


def test_auto_takes_the_last_when_its_metrics_are_finite(tmp_path: Path) -> None:
    job = Job(tmp_path)
    job.save("e0.ckpt", 10, 0.2)
    last = job.save("last.ckpt", 20, 0.7, kind="last")
    choice = choose_resume(job.entries(), "auto")
    assert (choice.path, choice.rule, choice.skipped) == (last, "auto: last", ())


def test_auto_takes_the_best_when_the_last_is_not_finite(tmp_path: Path) -> None:
    job = Job(tmp_path)
    best = job.save("e0.ckpt", 10, 0.2)
    job.save("e1.ckpt", 20, 0.4)
    job.save("last.ckpt", 30, None, kind="last", finite=False)
    choice = choose_resume(job.entries(), "auto")
    assert (choice.path, choice.rule, choice.skipped) == (best, "auto: best (last has non-finite metrics)", ())


def test_auto_skips_non_finite_entries_on_the_way(tmp_path: Path) -> None:
    job = Job(tmp_path)
    # val_loss was finite when this was saved, but another logged metric was NaN
    tainted = job.save("e1.ckpt", 20, 0.1, finite=False)
    good = job.save("e0.ckpt", 15, 0.3)
    job.save("last.ckpt", 30, None, kind="last", finite=False)
    choice = choose_resume(job.entries(), "auto")
    assert (choice.path, choice.rule, choice.skipped) == (
        good, "auto: best (last has non-finite metrics), fallback: next best", ((tainted, NON_FINITE),))


def test_auto_last_falls_back_past_non_finite_and_corrupt(tmp_path: Path) -> None:
    job = Job(tmp_path)
    oldest = job.save("e0.ckpt", 10, 0.5)
    nan = job.save("e1.ckpt", 20, 0.4, finite=False)
    last = job.save("last.ckpt", 30, 0.4, kind="last")
    corrupt(last)
    choice = choose_resume(job.entries(), "auto")
    assert (choice.path, choice.rule, choice.skipped) == (
        oldest, "auto: last, fallback: next newest", ((last, crc_reason(last)), (nan, NON_FINITE)))


def test_scratch_when_every_candidate_is_rejected(tmp_path: Path) -> None:
    job = Job(tmp_path)
    a = job.save("e0.ckpt", 10, 0.5)
    b = job.save("e1.ckpt", 20, 0.4)
    corrupt(a)
    Path(b).write_bytes(b"garbage")
    entries = live_checkpoints(job.manifest)
    choice = choose_resume(entries, "best")
    assert choice.path is None and choice.entry is None and choice.rule == "scratch"
    assert [path for path, _ in choice.skipped] == [b, a]
    assert choice.skipped[1][1] == crc_reason(a)
    assert choice.skipped[0][1].startswith("size 7 bytes")


def test_scratch_without_checkpoints(tmp_path: Path) -> None:
    job = Job(tmp_path)
    for mode in ("best", "last", "auto"):
        assert choose_resume(job.entries(), mode) == ResumeChoice(None, None, "scratch", ())


def test_a_file_removed_behind_the_manifest_is_reported_missing(tmp_path: Path) -> None:
    job = Job(tmp_path)
    gone = job.save("e0.ckpt", 10, 0.1)
    kept = job.save("e1.ckpt", 20, 0.3)
    os.remove(gone)
    choice = choose_resume(live_checkpoints(job.manifest, require_file=False), "best")
    assert (choice.path, choice.skipped) == (kept, ((gone, "missing"),))


def test_removed_and_abandoned_checkpoints_are_never_chosen(tmp_path: Path) -> None:
    job = Job(tmp_path)
    dropped = job.save("e0.ckpt", 10, 0.05)
    record_remove(job.manifest, dropped, attempt=1)
    os.remove(dropped)
    best = job.save("e1.ckpt", 20, 0.2)
    job.save("e2.ckpt", 30, 0.1)  # a later timeline: resuming from best rewinds past it
    job.save("last.ckpt", 30, 0.1, kind="last")
    moved = abandon_after(job.manifest, best, attempt=2)
    assert len(moved) == 2
    for mode in ("best", "last", "auto"):
        assert choose_resume(job.entries(), mode).path == best


def test_verify_is_asked_in_candidate_order(tmp_path: Path) -> None:
    job = Job(tmp_path)
    a = job.save("e0.ckpt", 10, 0.1)
    b = job.save("e1.ckpt", 20, 0.2)
    c = job.save("e2.ckpt", 30, 0.3)
    asked: list[str] = []

    def reject_all(entry: CheckpointEntry) -> str | None:
        asked.append(entry.path)
        return "rejected"

    assert choose_resume(job.entries(), "best", verify=reject_all).rule == "scratch"
    assert asked == [a, b, c]
    asked.clear()
    choose_resume(job.entries(), "last", verify=reject_all)
    assert asked == [c, b, a]


def test_unknown_resume_from_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resume_from must be one of best, last, auto; got 'newest'"):
        choose_resume([], "newest")
