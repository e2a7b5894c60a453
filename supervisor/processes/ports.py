"""The TCP port rank 0's store listens on (``MASTER_PORT``): a fresh free one per attempt, or a fixed one waited for."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping

DEFAULT_MASTER_ADDR = "127.0.0.1"
# A fixed MASTER_PORT still held by the previous attempt's ranks (or TIME_WAIT): wait this long for it.
DEFAULT_PORT_WAIT_S = 60.0


def free_port(addr: str = DEFAULT_MASTER_ADDR) -> int:
    """A TCP port nobody listens on now (the kernel picks it; torchrun does the same)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


def port_is_free(addr: str, port: int) -> bool:
    """Whether rank 0's store could listen on ``port`` now (SO_REUSEADDR, as c10d's TCPStore binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
        return True


def wait_port_free(addr: str, port: int, timeout_s: float, poll_s: float = 0.2) -> bool:
    """Wait until ``port`` can be bound (the previous attempt's ranks may still hold it); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while not port_is_free(addr, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def choose_master_port(explicit: int | None, environ: Mapping[str, str]) -> tuple[int, bool]:
    """The port for this attempt and whether it is fixed (``--master-port``, else the job's ``MASTER_PORT``).

    A fixed port is honoured (the job may need it, e.g. for a firewall); otherwise a fresh free
    port per attempt, so a restart never races the previous attempt's sockets.
    """
    if explicit:
        return explicit, True
    configured = environ.get("MASTER_PORT", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured), True
    return free_port(), False

