"""The files of a checkpoint save: temp names, durable writes and copies, and the error a failed save raises."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

TMP_SUFFIX = ".tmp"


def temp_path_for(filepath: str) -> str:
    """The temp name a save of ``filepath`` is written under: hidden, same directory, ``.tmp``."""
    head, tail = os.path.split(filepath)
    return os.path.join(head, f".{tail}{TMP_SUFFIX}")


def remove_stale_temp_files(dirpath: str | Path) -> list[str]:
    """Delete ``.*.tmp`` left in ``dirpath`` by a save that was killed (never in the manifest)."""
    removed = []
    for path in Path(dirpath).glob(f".*{TMP_SUFFIX}"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(str(path))
    return removed


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; the message says where, why, and how much space is left."""

    def __init__(self, filepath: str, cause: BaseException) -> None:
        directory = os.path.dirname(filepath) or "."
        try:
            free = f"{shutil.disk_usage(directory).free / 2**20:.0f} MiB free on {directory}"
        except OSError:
            free = f"free space on {directory} unknown"
        text = str(cause)
        # torch's zip writer reports ENOSPC as a RuntimeError "... file write failed"
        full = ((isinstance(cause, OSError) and cause.errno == errno.ENOSPC) or "No space left" in text
                or "file write failed" in text)
        why = "disk full" if full else f"{type(cause).__name__}: {text}"
        super().__init__(errno.ENOSPC if full else errno.EIO,
                         f"cannot save checkpoint {os.path.basename(filepath)}: {why} ({free})")


def fsync_path(path: str) -> None:
    """fsync a file or a directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_durably(source: str, dest: str) -> None:
    """Copy ``source`` to ``dest`` and fsync it."""
    with open(source, "rb") as src, open(dest, "wb") as dst:
        while chunk := src.read(16 * 1024 * 1024):
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
