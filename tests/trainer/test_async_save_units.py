"""The async save's parts in this process: the snapshot is a copy, one write at a time in order, a failed write
stops the work queued after it and surfaces on the step loop's thread, and a write leaves a whole file or none."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from trainer.callbacks.async_save import (
    BackgroundWriter,
    Snapshot,
    SnapshotCheckpointIO,
    with_snapshot_io,
    write_snapshot,
)
from trainer.callbacks.checkpoint import ManifestCheckpoint


def test_the_snapshot_is_a_point_in_time_copy_and_counts_its_bytes() -> None:
    weight = torch.zeros(1000)
    snap = Snapshot({"state_dict": {"w": weight}, "step": 3}, "x.ckpt", None)
    weight += 1  # the optimizer's next step
    assert snap.checkpoint is not None
    assert float(snap.checkpoint["state_dict"]["w"].sum()) == 0.0 and snap.checkpoint["step"] == 3
    assert snap.nbytes == 4000
    snap.release()
    assert snap.checkpoint is None


def test_one_write_in_flight_and_its_follow_ups_in_order() -> None:
    logs: list[str] = []
    writer = BackgroundWriter(log=logs.append)
    release, done = threading.Event(), []
    writer.submit(lambda: (release.wait(5), done.append("write 1")), holds_snapshot=True)
    writer.submit(lambda: done.append("line 1"))
    assert writer.in_flight
    threading.Timer(0.2, release.set).start()
    waited = writer.wait_for_slot()  # the next snapshot waits for the first write, and says so
    assert waited >= 0.15 and done[:1] == ["write 1"] and writer.waits == 1
    assert logs and "waited" in logs[0] and "at most one in flight" in logs[0]
    writer.submit(lambda: done.append("write 2"), holds_snapshot=True)
    writer.drain()
    assert done == ["write 1", "line 1", "write 2"]
    assert writer.wait_for_slot() < 0.05 and writer.waits == 1  # nothing in flight: no wait, no log
    writer.close()


def test_a_failed_write_skips_what_was_queued_after_it_and_is_raised_on_the_loops_thread() -> None:
    writer = BackgroundWriter(log=lambda _: None)
    ran: list[str] = []
    go = threading.Event()

    def fail() -> None:
        go.wait(5)
        raise OSError("disk full")
    writer.submit(fail, holds_snapshot=True)
    writer.submit(lambda: ran.append("manifest line"))
    go.set()
    with pytest.raises(OSError, match="disk full"):
        writer.drain()
    writer.submit(lambda: ran.append("later"))
    time.sleep(0.05)
    writer.drain()
    assert ran == []  # never a line for a file that was not written
    writer.close()


def test_write_snapshot_leaves_a_whole_checked_file_or_none(tmp_path: Path) -> None:
    io = SnapshotCheckpointIO(TorchCheckpointIO())
    target, tmp = tmp_path / "a.ckpt", tmp_path / ".a.ckpt.tmp"
    facts: dict[str, object] = {}
    snap = Snapshot({"state_dict": {"w": torch.ones(256)}}, str(tmp), None)
    write_snapshot(io, snap, str(tmp), str(target), facts)
    assert torch.load(target)["state_dict"]["w"].sum() == 256 and not tmp.exists()
    assert facts["async"] is True and facts["snapshot_mb"] == 0.0 and float(facts["write_s"]) >= 0  # type: ignore[arg-type]
    assert snap.checkpoint is None  # the memory is given back once written

    class Broken(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):  # type: ignore[no-untyped-def]
            Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
    bad = tmp_path / "b.ckpt"
    with pytest.raises(OSError, match="does not verify"):
        write_snapshot(SnapshotCheckpointIO(Broken()), Snapshot({"w": torch.ones(4)}, "", None),
                       str(tmp_path / ".b.ckpt.tmp"), str(bad), {})
    assert not bad.exists() and not (tmp_path / ".b.ckpt.tmp").exists()


def test_the_plugins_checkpoint_io_is_wrapped_once_and_the_users_kept() -> None:
    users = TorchCheckpointIO()
    plugins = with_snapshot_io([users])
    assert len(plugins) == 1 and isinstance(plugins[0], SnapshotCheckpointIO) and plugins[0].checkpoint_io is users
    default = with_snapshot_io(None)
    assert isinstance(default[0], SnapshotCheckpointIO) and default[0].checkpoint_io is None  # Lightning's, later


def test_without_async_there_is_no_writer(tmp_path: Path) -> None:
    assert ManifestCheckpoint(tmp_path, attempt=1)._writer is None
    assert ManifestCheckpoint(tmp_path, attempt=1, async_save=True)._writer is not None


def test_every_way_out_waits_for_the_write_in_flight(tmp_path: Path) -> None:
    """A crash or divergence (on_exception) and a synchronous save (SIGTERM's, the fit end's) drain the writer
    first: the write in flight is finished, and files keep their order."""
    for way_out in ("exception", "sync save"):
        checkpoint = ManifestCheckpoint(tmp_path, attempt=1, async_save=True)
        writer = checkpoint._writer
        assert writer is not None
        done: list[str] = []
        writer.submit(lambda done=done: (time.sleep(0.3), done.append("write")), holds_snapshot=True)  # type: ignore[misc]
        if way_out == "exception":
            checkpoint.on_exception(None, None, RuntimeError("boom"))  # type: ignore[arg-type]
        else:
            checkpoint._sync_now = True
            assert checkpoint._writer_now() is None  # the save itself is synchronous
        assert done == ["write"], way_out


def test_the_writer_child_says_why_it_failed_and_its_file_comes_back(tmp_path: Path) -> None:
    from trainer.callbacks.async_save import write_in_child

    def full() -> None:
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left on device"):
        write_in_child(full, "x")
    target = tmp_path / "w.pt"
    write_in_child(lambda: torch.save({"w": torch.arange(3)}, target), "w.pt")  # written by another process
    assert torch.load(target)["w"].tolist() == [0, 1, 2]
