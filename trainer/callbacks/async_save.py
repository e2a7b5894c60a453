"""``checkpoint.async: true``: the step loop takes a snapshot of the checkpoint and goes on while a thread writes it.

Why Lightning's ``CheckpointIO`` layer and not ``torch.distributed.checkpoint``'s
``async_save``: DCP writes a directory of shards in its own format, which neither
Lightning's ``ckpt_path``, nor the manifest's size and zip check, nor the standby's
cache read; a ``CheckpointIO`` sees the very dict ``trainer.save_checkpoint`` builds
(through the strategy, so only global rank 0 is handed one) and writes the same
single ``torch.save`` file. Lightning's own ``AsyncCheckpointIO`` snapshots the same
way (tensors copied on the caller's thread) but gives no hook for "the file is
complete" (the manifest line must wait for it), queues any number of saves, and
reports a failed write only at the next save; so ``SnapshotCheckpointIO`` only takes
the snapshot and ``BackgroundWriter`` runs what ``ManifestCheckpoint`` hands it: the
write to the temp name, fsync, the zip check, the rename and only then the manifest
line, and after it, in order, the links and removals of the same save. The write itself
runs in a forked child (``write_in_child``): ``torch.save`` holds the GIL throughout, so
in a thread it stalled the step loop as long as a synchronous save (measured: a loop of
small ops took 2.2 s instead of 0.3 s beside a 512 MB ``torch.save`` in a thread).

The snapshot is a copy of every tensor in host memory (a GPU tensor is copied to the
CPU): at most one exists at a time, since a new snapshot waits for the previous
write to finish (``wait_for_slot``, logged), so the memory held is bounded by one
checkpoint's tensors; its size is in each manifest line (``snapshot_mb``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from lightning_fabric.plugins import CheckpointIO
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.plugins.io.wrapper import _WrappingCheckpointIO

from supervisor.jobfiles.manifest import CheckpointEntry
from supervisor.rules.resume import verify_checkpoint
from trainer.callbacks.checkpoint_files import fsync_path
from trainer.proctitle import set_command_line

PR_SET_PDEATHSIG = 1
WAIT_LOG_S = 0.01  # a wait for the previous save shorter than this is not worth a log line


class Snapshot:
    """A point-in-time copy of a checkpoint dict, its tensors in host memory."""

    def __init__(self, checkpoint: dict[str, Any], path: Any, storage_options: Any) -> None:
        self.nbytes = 0

        def copy(tensor: torch.Tensor) -> torch.Tensor:
            # On the caller's thread, between steps: the optimizer must not change it while it is written.
            out = tensor.detach().to("cpu", copy=True)
            self.nbytes += out.numel() * out.element_size()
            return out

        self.checkpoint: dict[str, Any] | None = apply_to_collection(checkpoint, torch.Tensor, copy)
        self.path = path
        self.storage_options = storage_options

    def release(self) -> None:
        """Drop the copy (its memory comes back once the write no longer holds it)."""
        self.checkpoint = None


class SnapshotCheckpointIO(_WrappingCheckpointIO):
    """A ``CheckpointIO`` that, inside ``capture()``, keeps a snapshot of what it is asked to save instead of writing.

    Outside ``capture()`` (and for loads and removals) it is the wrapped ``CheckpointIO`` (the user's,
    the standby's cache, or Lightning's default).
    """

    def __init__(self, checkpoint_io: CheckpointIO | None = None) -> None:
        super().__init__(checkpoint_io)
        self._capturing = False
        self.captured: Snapshot | None = None

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Saves inside become snapshots (``captured``), written later by ``write``."""
        self._capturing, self.captured = True, None
        try:
            yield
        finally:
            self._capturing = False

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """A snapshot while capturing, else the wrapped save."""
        if self._capturing:
            self.captured = Snapshot(checkpoint, path, storage_options)
            return
        assert self.checkpoint_io is not None
        self.checkpoint_io.save_checkpoint(checkpoint, path, storage_options=storage_options)

    def write(self, snapshot: Snapshot, path: str) -> None:
        """Write ``snapshot`` to ``path`` with the wrapped ``CheckpointIO`` (on the writer's thread)."""
        assert self.checkpoint_io is not None and snapshot.checkpoint is not None
        if type(self.checkpoint_io).save_checkpoint is TorchCheckpointIO.save_checkpoint \
                and snapshot.storage_options is None:
            # Lightning's own save serializes into memory first (one more copy of the checkpoint) for an atomic
            # write; ours is atomic by the rename after it.
            torch.save(snapshot.checkpoint, path)
            return
        self.checkpoint_io.save_checkpoint(snapshot.checkpoint, path, storage_options=snapshot.storage_options)


def with_snapshot_io(plugins: Any) -> list[Any]:
    """The Trainer's plugins, their ``CheckpointIO`` (or Lightning's default) wrapped in ``SnapshotCheckpointIO``."""
    given = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    inner = next((p for p in given if isinstance(p, CheckpointIO)), None)
    kept = [p for p in given if p is not inner]
    return [*kept, SnapshotCheckpointIO(inner)]


class BackgroundWriter:
    """One thread that runs a checkpoint's file work in order; at most one snapshot in flight.

    A task's exception is kept and raised by the next ``wait_for_slot`` or ``drain`` on the step
    loop's thread (a failed save fails the fit, as a synchronous one does).
    """

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._snapshot_done: Future[None] | None = None  # the task that releases the snapshot in flight
        self._last: Future[None] | None = None
        self._error: BaseException | None = None
        self._failed = False  # sticky: once a task failed, the tasks queued after it are skipped
        self._lock = threading.Lock()
        self._log = log or _log
        self.waits = 0  # saves that had to wait for the previous one (the log says so each time)

    @property
    def in_flight(self) -> bool:
        """Whether a snapshot is still being written."""
        return self._snapshot_done is not None and not self._snapshot_done.done()

    def wait_for_slot(self) -> float:
        """Block until no snapshot is in flight (so at most one exists); returns the seconds waited."""
        started = time.perf_counter()
        if self.in_flight:
            assert self._snapshot_done is not None
            self._snapshot_done.result()
            waited = time.perf_counter() - started
            self.waits += 1
            if waited >= WAIT_LOG_S:
                self._log(f"async checkpoint: waited {waited:.2f} s for the previous save to finish "
                          "(at most one in flight)")
        self._raise_kept()
        return time.perf_counter() - started

    def submit(self, task: Callable[[], None], *, holds_snapshot: bool = False) -> None:
        """Run ``task`` after every task submitted before it."""
        self._raise_kept()

        def run() -> None:
            if self._failed:
                return  # an earlier task failed: the ones after it (links, removals, lines) must not run
            try:
                task()
            except BaseException as exc:  # kept for the step loop's thread
                with self._lock:
                    self._error, self._failed = exc, True

        future = self._executor.submit(run)
        self._last = future
        if holds_snapshot:
            self._snapshot_done = future

    def drain(self) -> float:
        """Wait for every task submitted so far; returns the seconds waited; raises a task's exception."""
        started = time.perf_counter()
        if self._last is not None:
            self._last.result()
        self._raise_kept()
        return time.perf_counter() - started

    def close(self) -> None:
        """Wait for the tasks and end the thread (errors are the caller's to fetch with ``drain`` first)."""
        self._executor.shutdown(wait=True)

    def _raise_kept(self) -> None:
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error


def write_snapshot(io: SnapshotCheckpointIO, snapshot: Snapshot, tmp: str, filepath: str,
                   facts: dict[str, Any]) -> None:
    """On the writer's thread: ``snapshot`` to ``tmp``, fsynced and checked as the daemon checks a resume (zip, CRCs),
    then renamed to ``filepath``; ``facts`` gets what the manifest line reports. A failure leaves no temp file."""
    started = time.perf_counter()
    try:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)  # a leftover temp name may be a hard link to a live checkpoint: never write through it
        write_in_child(lambda: io.write(snapshot, tmp), os.path.basename(tmp))
        fsync_path(tmp)
        problem = verify_checkpoint(CheckpointEntry(path=tmp, step=0, epoch=0, monitor=None, score=None, mode="min",
                                                    size=0, time=0.0, attempt=0))
        if problem is not None:
            raise OSError(f"the written file does not verify: {problem}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    finally:
        snapshot.release()
    os.replace(tmp, filepath)
    fsync_path(os.path.dirname(filepath))
    facts.update({"async": True, "snapshot_mb": round(snapshot.nbytes / 2**20, 1),
                  "write_s": round(time.perf_counter() - started, 3)})


def write_in_child(write: Callable[[], None], what: str) -> None:
    """Run ``write`` in a forked child and wait for it (on the writer's thread).

    ``torch.save`` holds the GIL for the whole write (its zip writer copies each storage
    without releasing it): in a thread, it stalls the step loop as long as a synchronous
    save would. A child has its own interpreter lock and sees the snapshot as it was
    (copy-on-write; the parent never writes the snapshot's pages). It dies with its
    parent (``PR_SET_PDEATHSIG``: a SIGKILLed trainer leaves no writer behind), shows
    ``checkpoint-writer`` as its command line (never taken for a second trainer), and
    only writes: no compute, no CUDA, no logging, ``os._exit`` at the end.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            _die_with_parent()
            set_command_line(["checkpoint-writer", what])
            write()
            code = 0
        except BaseException as exc:  # said to the parent through the pipe
            with contextlib.suppress(BaseException):
                os.write(write_end, f"{type(exc).__name__}: {exc}".encode(errors="replace")[:4000])
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        said = reader.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise OSError(said or f"the checkpoint writer process ended with {code}")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os._exit(1)


def _log(message: str) -> None:
    print(f"[trainer] {message}", file=sys.stderr, flush=True)
