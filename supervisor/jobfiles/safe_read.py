"""The one reader of the files a trainer, its monitor or a batch script can write: bounded in type, size and time.

In shared-server mode an attempt dir and a checkpoint dir belong to the job's owner, and in any mode the
trainer is the user's code: a file the daemon reads there may be anything. A FIFO (a plain ``open`` waits for
a writer for ever), a 50 GB sparse file (read whole: the OOM killer), a link to ``/dev/zero`` or to a file only
root may read, a directory, or a file on a filesystem that does not answer. So every such read goes through
here:

- opened with ``O_NOFOLLOW | O_NONBLOCK`` (a link is not followed; opening a FIFO returns at once);
- ``fstat`` must say a regular file: a FIFO, socket, device or directory is unreadable (logged once per path);
- at most the kind's cap (``cap_for``, by the file's name: a heartbeat 256 KiB, an exit record 1 MiB, the
  manifest 64 MiB in all). Small JSON files are read whole up to their cap; append-only files (manifest,
  metrics, logs) in chunks from an offset, never whole. A file over its cap is unreadable, logged once with
  its name and size: never an exception in the loop, never an OOM;
- every open, ``stat``, read and ``listdir`` runs under the deadline (``deadline.guarded``) once the daemon
  has enabled it: a file that does not answer raises ``FileStalled`` instead of holding the loop.

``None`` means missing or unreadable; ``FileStalled`` that the file did not answer in time, and ``OSError``
EMFILE/ENFILE (after a few tries) that the process is out of descriptors: for both, the caller tries again later
(the daemon's tick polls the job again) instead of taking an existing file for a missing one.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from supervisor.jobfiles.deadline import guarded

log = logging.getLogger("ml_supervisor")

KiB, MiB = 1024, 1024 * 1024

# Per kind, by the file's name: the most that is read of it (whole for JSON, in all for JSON lines).
# Generous for what the trainer writes (a heartbeat with a thousand metrics is ~50 KiB; an exit record
# carries a 4000-character traceback tail and the exception's message), bounded for what it could write.
CAPS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"heartbeat(\.rank\d+)?\.json"), 256 * KiB),
    (re.compile(r"exit(\.rank\d+)?\.json"), 1 * MiB),
    (re.compile(r"monitor(-exit)?\.json"), 256 * KiB),
    (re.compile(r"slurm-end\.json"), 64 * KiB),
    (re.compile(r"standby-ready(\.rank\d+)?\.json"), 1 * MiB),
    (re.compile(r"manifest\.jsonl"), 64 * MiB),
    (re.compile(r"metrics(\.rank\d+)?\.jsonl"), 256 * MiB),
)
JSON_CAP = 1 * MiB  # any other JSON file read whole (the daemon's own small files too)
JSON_LINES_CAP = 1024 * MiB  # any other JSON lines file (the daemon's own alerts and trials): a guard rail
CHUNK = 1 * MiB  # append-only files are read this much at a time; a longer line is skipped
MAX_LISTED = 10_000  # a directory is listed this far, never whole

# Out of file descriptors (this process: EMFILE; the system: ENFILE) says nothing about the file.
FD_SHORTAGE = (errno.EMFILE, errno.ENFILE)
FD_RETRIES = 3
FD_RETRY_DELAY_S = 0.05

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KIND_NAMES = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFDIR: "a directory", stat.S_IFLNK: "a link"}


def cap_for(path: str | Path, default: int | None = JSON_CAP) -> int | None:
    """The cap of ``path``'s kind (by its name), else ``default``."""
    name = os.path.basename(os.fspath(path))
    for pattern, cap in CAPS:
        if pattern.fullmatch(name):
            return cap
    return default


# -- logged once per path ---------------------------------------------------------------------------------
_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()
_MAX_LOGGED = 10_000


def log_once(path: str | Path, why: str) -> None:
    """One warning per (path, reason): a bad file is read at every poll, and said once."""
    key = (os.fspath(path), why)
    with _logged_lock:
        if key in _logged:
            return
        if len(_logged) >= _MAX_LOGGED:
            _logged.clear()
        _logged.add(key)
    log.warning("%s is not read: %s", key[0], why)


def _kind(mode: int) -> str:
    return _KIND_NAMES.get(stat.S_IFMT(mode), "not a regular file")


def _size_text(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size < 10 * 1024 * MiB else f"{size / (1024 * MiB):.1f} GiB"


# -- the reads --------------------------------------------------------------------------------------------
def _retrying(fn: Callable[[], bytes | None]) -> bytes | None:
    """``fn()``, tried again on a descriptor shortage, then raised; any other ``OSError`` is ``None``."""
    for attempt in range(FD_RETRIES):
        try:
            return fn()
        except OSError as exc:
            if exc.errno not in FD_SHORTAGE:
                if exc.errno == errno.ELOOP:
                    log_once(exc.filename or "?", "it is a link (never followed)")
                elif exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # missing is no news
                    log_once(exc.filename or "?", f"it cannot be opened ({exc.strerror})")
                return None
            if attempt == FD_RETRIES - 1:
                raise
            time.sleep(FD_RETRY_DELAY_S * (attempt + 1))
    return None


def _open_regular(path: str, total_cap: int | None, owners: tuple[int, ...] | None) -> tuple[int, int] | None:
    """An fd on ``path`` and its size, when it is a regular file within ``total_cap`` (and ``owners``'); else
    ``None`` (logged once). Raises ``OSError`` for a missing file or a shortage (the caller sorts them)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            log_once(path, f"it is {_kind(info.st_mode)}, not a regular file")
        elif total_cap is not None and info.st_size > total_cap:
            log_once(path, f"it is {_size_text(info.st_size)}, over the {_size_text(total_cap)} cap of its kind")
        elif owners is not None and info.st_uid not in owners:
            log_once(path, f"it belongs to uid {info.st_uid}, not to the job's owner")
        else:
            opened, fd = (fd, info.st_size), -1
            return opened
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    """Up to ``size`` bytes at ``offset`` (a read may be short before the end of the file)."""
    parts: list[bytes] = []
    while size > 0:
        data = os.pread(fd, min(size, CHUNK), offset)
        if not data:
            break
        parts.append(data)
        size -= len(data)
        offset += len(data)
    return b"".join(parts)


def read_file(path: str | Path, cap: int | None = None) -> bytes | None:
    """The whole of a small file (at most ``cap``, default its kind's), or ``None`` when missing or unreadable."""
    where = os.fspath(path)
    limit = cap if cap is not None else (cap_for(where) or JSON_CAP)

    def read() -> bytes | None:
        opened = _open_regular(where, limit, None)
        if opened is None:
            return None
        fd = opened[0]
        try:
            data = _pread_all(fd, limit + 1, 0)
        finally:
            os.close(fd)
        if len(data) > limit:  # it grew past the cap after the fstat
            log_once(where, f"it grew over the {_size_text(limit)} cap of its kind")
            return None
        return data

    return guarded(where, lambda: _retrying(read))


def read_range(path: str | Path, offset: int, size: int, *, total_cap: int | None = None,
               owners: tuple[int, ...] | None = None) -> bytes | None:
    """At most ``size`` bytes of ``path`` from ``offset`` (a log, the manifest's new lines), or ``None`` when
    missing or unreadable. ``total_cap``: a file larger than that is not read at all (``None``: its kind's
    cap, ``JSON_LINES_CAP`` for another; logs pass 0 for none). ``owners``: the uids the file must belong to."""
    where = os.fspath(path)
    limit = cap_for(where, default=JSON_LINES_CAP) if total_cap is None else (total_cap or None)

    def read() -> bytes | None:
        opened = _open_regular(where, limit, owners)
        if opened is None:
            return None
        fd = opened[0]
        try:
            return _pread_all(fd, max(0, size), max(0, offset))
        finally:
            os.close(fd)

    return guarded(where, lambda: _retrying(read))


def complete_lines(path: str | Path, start: int, *, max_bytes: int = CHUNK, total_cap: int | None = None
                   ) -> tuple[list[bytes], int] | None:
    """The complete lines in the next ``max_bytes`` of ``path`` after ``start``, and the offset after the
    last newline read; ``None`` when the file is missing or unreadable.

    A line being written (no newline yet) is left for the next call. A line longer than ``max_bytes`` is
    skipped: a full read without any newline moves the offset past it (its tail, read next, is no JSON).
    """
    data = read_range(path, start, max_bytes, total_cap=total_cap)
    if data is None:
        return None
    end = data.rfind(b"\n") + 1
    if end == 0:
        return [], start + (len(data) if len(data) >= max_bytes else 0)
    return data[:end].split(b"\n")[:-1], start + end


def iter_lines(path: str | Path, *, start: int = 0, total_cap: int | None = None) -> Iterator[bytes]:
    """Every complete line of ``path`` from ``start``, read a chunk at a time (``[]`` when missing)."""
    offset = start
    while True:
        got = complete_lines(path, offset, total_cap=total_cap)
        if got is None:
            return
        lines, after = got
        yield from lines
        if after == offset:
            return
        offset = after


# -- metadata ---------------------------------------------------------------------------------------------
def _quiet_stat(fn: Callable[[], os.stat_result]) -> os.stat_result | None:
    try:
        return fn()
    except OSError as exc:
        if exc.errno in FD_SHORTAGE:
            raise
        return None


def lstat(path: str | Path) -> os.stat_result | None:
    """``path``'s own ``lstat`` (a link is a link), or ``None`` when missing."""
    where = os.fspath(path)
    return guarded(where, lambda: _quiet_stat(lambda: os.lstat(where)))


def stat_following(path: str | Path) -> os.stat_result | None:
    """``stat`` through links (a user's module may be a link), or ``None`` when missing; under the deadline."""
    where = os.fspath(path)
    return guarded(where, lambda: _quiet_stat(lambda: os.stat(where)))


def regular_size(path: str | Path) -> int | None:
    """The size of ``path`` when it is a regular file (not a link), else ``None``."""
    info = lstat(path)
    return info.st_size if info is not None and stat.S_ISREG(info.st_mode) else None


def is_regular(path: str | Path) -> bool:
    """Whether ``path`` is a regular file (a link to one is not)."""
    return regular_size(path) is not None


def list_dir(path: str | Path, limit: int = MAX_LISTED) -> list[str] | None:
    """The names in directory ``path`` (at most ``limit``; not through a link), or ``None`` when it is none."""
    where = os.fspath(path)

    def names() -> list[str] | None:
        try:
            fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            found: list[str] = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    found.append(entry.name)
                    if len(found) >= limit:
                        log_once(where, f"it holds more than {limit} entries; only {limit} are looked at")
                        break
            return found
        except OSError:
            return None
        finally:
            os.close(fd)

    return guarded(where, names, key=where)
