"""Crash-safe small-file I/O: atomic JSON writes, one-line appends, tolerant and bounded reads (``safe_read``)."""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

from supervisor.jobfiles.safe_read import complete_lines, iter_lines, read_file


def write_json_atomic(path: str | Path, obj: Any, *, durable: bool = True) -> None:
    """Write ``obj`` as JSON so readers see the old file or the new one, never a mix.

    ``durable`` fsyncs the data before the rename (records that must survive a
    power cut: exit records, monitor status). Heartbeats pass ``False``: losing
    one to a crash costs nothing and the fsync would cost step time.
    """
    path = Path(path)
    # pid and thread: two writers of the same file (a heartbeat timer and the main thread)
    # must not share a temp file, or the rename could publish a mix of both.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str).encode()
    # A fresh file, never through what is already there: in an attempt dir the job's owner could have put a
    # link (the daemon, as root, would write where it points) or a FIFO (an open for writing waits for a
    # reader) at this name. Whatever is there is removed first; O_EXCL refuses it if it comes back.
    _unlink_quietly(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        try:
            _write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        _fsync_dir(path.parent)  # the rename itself must survive a power cut too


def append_json_line(path: str | Path, obj: Any) -> None:
    """Append one JSON line with a single ``write`` on an O_APPEND fd, then fsync.

    A reader that finds a last line without its newline ignores it (see
    ``read_json_lines``), so a writer killed mid-line corrupts nothing.
    Only to a regular file, never through a link: a FIFO, a link or a directory at ``path`` is an
    ``OSError`` at once (``O_NONBLOCK``: opening a FIFO does not wait for a reader), never a wait.
    """
    line = (json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file: nothing is appended to it", os.fspath(path))
        os.set_blocking(fd, True)
        size = info.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            # A torn last line (writer killed mid-line): end it, or this line would be glued
            # onto it and skipped with it.
            line = b"\n" + line
        _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a platform or file system without directory fds: nothing more we can do
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def read_json(path: str | Path, cap: int | None = None) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable.

    Read through ``safe_read``: never through a link, only a regular file, at most ``cap`` bytes (default:
    its kind's, ``safe_read.cap_for``). A shortage of file descriptors is not "missing": a finished
    attempt's exit record read as absent would look like a vanished trainer. It is retried briefly, then
    raised as ``OSError`` for the caller to retry later (the daemon's tick polls the job again); so is a
    file that does not answer in time (``FileStalled``, once the daemon has enabled the deadline).
    """
    data = read_file(path, cap)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: a file of 100 000 nested brackets
        return None


def read_json_lines(path: str | Path, *, total_cap: int | None = None) -> list[Any]:
    """Every complete JSON line of ``path`` (a torn last line is skipped), read a chunk at a time.

    ``total_cap``: a file larger than that is not read at all (default: its kind's cap, ``safe_read.CAPS``;
    none for the daemon's own files). A line longer than a chunk (1 MiB) is skipped.
    """
    return [value for value in map(_json_line, iter_lines(path, total_cap=total_cap)) if value is not _SKIP]


def read_json_lines_from(path: str | Path, offset: int) -> tuple[list[Any], int]:
    """The complete JSON lines after byte ``offset`` (at most a chunk of them), and the offset to read from next.

    For following an append-only file without re-reading it: the returned offset stops at the last newline,
    so a line being written is read whole later; what a chunk left is read at the next call.
    """
    got = complete_lines(path, offset)  # a descriptor shortage raises: no checkpoint may look gone
    if got is None:
        return [], offset
    lines, after = got
    return [value for value in map(_json_line, lines) if value is not _SKIP], after


_SKIP = object()


def _json_line(raw: bytes) -> Any:
    if not raw.strip():
        return _SKIP
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _SKIP


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None`` (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number
