"""A filesystem that does not answer: the stand-in for a hung NFS server, for tests (root and /dev/fuse only).

``StallingFs(mountpoint)`` mounts a FUSE filesystem over ``mountpoint`` that answers the kernel's INIT and
then nothing: every lookup, ``stat``, ``open``, read or listing of a path under it waits, in the kernel, as
one on a hung NFS mount does (``O_NONBLOCK`` changes nothing: it is the lookup that waits). Leaving the
``with`` block detaches the mount and closes the connection: every waiting request fails with ENOTCONN and
the path shows what was under the mount again.

The FUSE protocol is spoken directly (``linux/fuse.h``): no library, about as much of it as a server that
hangs right after its handshake needs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from pathlib import Path
from types import TracebackType

FUSE_INIT = 26
FUSE_FORGET = 2
FUSE_INTERRUPT = 36
FUSE_BATCH_FORGET = 42
MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH = 2
IN_HEADER = struct.Struct("<IIQQIIIHH")  # fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("<IiQ")  # fuse_out_header: len, error, unique
INIT_IN = struct.Struct("<IIII")  # fuse_init_in (its start): major, minor, max_readahead, flags
INIT_OUT = struct.Struct("<IIIIHHIIHHI7I")  # fuse_init_out (64 bytes)
BUFFER = 256 * 1024  # the kernel refuses reads of /dev/fuse into less than max_write + a page


def available() -> str | None:
    """Why a stalling filesystem cannot be mounted here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root (mount)"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    return None


class StallingFs:
    """A FUSE mount over ``mountpoint`` that never answers after its handshake (see the module docstring)."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        self.held = 0  # requests received and never answered
        self._fd = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def __enter__(self) -> StallingFs:
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        options = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if self._libc.mount(b"stalling", os.fsencode(self.mountpoint), b"fuse.stalling", MS_NOSUID | MS_NODEV,
                            options) != 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"mount fuse on {self.mountpoint}: {os.strerror(err)}")
        self._thread = threading.Thread(target=self._serve, name="stalling-fs", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Detach the mount and end the connection: every waiting request fails (ENOTCONN)."""
        if self._fd < 0:
            return
        self._libc.umount2(os.fsencode(self.mountpoint), MNT_DETACH)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)  # out of its read: the close below drops the last reference
        fd, self._fd = self._fd, -1
        os.close(fd)  # the device's last reference: the kernel aborts the connection

    def _serve(self) -> None:
        fd = self._fd
        while not self._stop.is_set():
            if not select.select([fd], [], [], 0.05)[0]:
                continue
            try:
                request = os.read(fd, BUFFER)
            except OSError:  # the connection ended
                return
            if len(request) < IN_HEADER.size:
                continue
            _, opcode, unique, *_ = IN_HEADER.unpack_from(request)
            if opcode == FUSE_INIT:
                _major, minor, max_readahead, _flags = INIT_IN.unpack_from(request, IN_HEADER.size)
                body = INIT_OUT.pack(7, min(minor, 38), max_readahead, 0, 16, 12, 4096, 1, 0, 0, 0, *([0] * 7))
                try:
                    os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(body), 0, unique) + body)
                except OSError:
                    return
            elif opcode not in (FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT):
                self.held += 1  # never answered: the caller waits as on a hung server
