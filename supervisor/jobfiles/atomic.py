"""Crash-safe small-file I/O: atomic JSON writes, one-line appends, tolerant reads."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path
from typing import Any


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
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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
    """
    line = (json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and _last_byte(path, size) != b"\n":
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


def _last_byte(path: str | Path, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1)


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


# Out of file descriptors (this process: EMFILE; the system: ENFILE) says nothing about the file.
_FD_SHORTAGE = (errno.EMFILE, errno.ENFILE)
FD_RETRIES = 3
FD_RETRY_DELAY_S = 0.05


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or unreadable.

    A shortage of file descriptors is not "missing": a finished attempt's exit
    record read as absent would look like a vanished trainer. It is retried
    briefly, then raised as ``OSError`` for the caller to retry later (the
    daemon's tick polls the job again).
    """
    data = _read_bytes(path, 0)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: a file of 100 000 nested brackets
        return None


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


def _read_bytes(path: str | Path, offset: int) -> bytes | None:
    """The bytes of ``path`` from ``offset``; ``None`` when it cannot be read; raises on a descriptor shortage."""
    for attempt in range(FD_RETRIES):
        try:
            # Never through a link: a job run as its owner (shared-server mode) has its files in their hands,
            # and the daemon reading as root must not read (and show) a file a planted link points at.
            with open(path, "rb", opener=_no_follow) as f:
                f.seek(offset)
                return f.read()
        except OSError as exc:
            if exc.errno not in _FD_SHORTAGE:
                return None
            if attempt == FD_RETRIES - 1:
                raise
            time.sleep(FD_RETRY_DELAY_S * (attempt + 1))
    return None


def read_json_lines(path: str | Path) -> list[Any]:
    """Every complete JSON line of ``path`` (a torn last line is skipped)."""
    return read_json_lines_from(path, 0)[0]


def read_json_lines_from(path: str | Path, offset: int) -> tuple[list[Any], int]:
    """The complete JSON lines after byte ``offset``, and the offset to read from next time.

    For following an append-only file without re-reading it: the returned
    offset stops at the last newline, so a line being written is read whole later.
    """
    data = _read_bytes(path, offset)  # a descriptor shortage raises: no checkpoint may look gone
    if data is None:
        return [], offset
    end = data.rfind(b"\n") + 1  # the part after the last newline is incomplete
    out = []
    for raw in data[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except (ValueError, RecursionError):
            continue
    return out, offset + end


def finite_or_none(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None`` (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int of 400 digits
        return None
    if number != number or number in (float("inf"), float("-inf")):
        return None
    return number
