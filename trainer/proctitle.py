"""Rewrite this process's command line and environment as ``/proc/<pid>/{cmdline,environ}`` show them.

A monitor or rank forked by the zygote (``trainer.zygote``), with no exec, would
show the zygote's; the daemon tells an attempt's processes by those files
(``--attempt-dir``, ``--standby``, its environment markers). So each writes what
an exec would have given it into the memory the kernel reads them from
(``arg_start..arg_end``, ``env_start..env_end`` of ``/proc/self/stat``), entries
NUL-separated, in the room the zygote reserved (``standbyfiles.ROOM_ARG``/``ROOM_ENV``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence

# Fields of /proc/<pid>/stat (1-based, proc(5)): where the kernel finds argv and the environment.
ARG_START, ARG_END, ENV_START, ENV_END = 48, 49, 50, 51


def memory_region(first: int, last: int, stat: str | None = None) -> tuple[int, int]:
    """Two fields of ``/proc/self/stat`` (or of ``stat``), e.g. ``(arg_start, arg_end)``."""
    if stat is None:
        with open("/proc/self/stat") as file:
            stat = file.read()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 is at index 0
    return int(fields[first - 3]), int(fields[last - 3])


def encode_entries(entries: Sequence[str], room: int) -> bytes | None:
    """``entries`` NUL-terminated and NUL-padded to exactly ``room`` bytes, or None when they do not fit."""
    data = b"".join(entry.encode() + b"\0" for entry in entries)
    if len(data) > room:
        return None
    return data.ljust(room, b"\0")  # the last byte stays NUL: the kernel then reads every entry


def set_command_line(argv: Sequence[str]) -> bool:
    """Show ``argv`` as this process's command line; False (nothing changed) when it does not fit."""
    return _overwrite(ARG_START, ARG_END, argv)


def set_environment_block(environ: Mapping[str, str]) -> bool:
    """Show ``environ`` as this process's environment; False (nothing changed) when it does not fit."""
    return _overwrite(ENV_START, ENV_END, [f"{key}={value}" for key, value in environ.items()])


def _overwrite(first: int, last: int, entries: Sequence[str]) -> bool:
    start, end = memory_region(first, last)
    data = encode_entries(entries, end - start)
    if data is None:
        return False
    ctypes.memmove(start, data, len(data))
    return True
