"""The attempt monitor's two files: ``monitor.json`` (the trainer started) and ``monitor-exit.json`` (it ended).

Written by ``supervisor.attempt_monitor``; read by the local runner. Typed
readers like the exit record's: a missing, torn or foreign file reads as
``None``, never as an exception.

    monitor.json       {"monitor_pid", "trainer_pid", "pgid", "started_at", "trainer_started", "boot_id", "subreaper",
                        "command"}   (trainer_started: the trainer's psutil create_time, its identity with the pid)
    monitor-exit.json  {"exit_code", "signal", "ended_at", "trainer_pid", "leftovers_killed"[, "error"]}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json


@dataclass(frozen=True)
class MonitorStart:
    """The monitor started the trainer (``monitor.json``)."""

    monitor_pid: int
    trainer_pid: int
    pgid: int
    started_at: float
    boot_id: str | None = None
    trainer_started: float | None = None


@dataclass(frozen=True)
class MonitorExit:
    """How the trainer process ended, as its monitor saw it (``monitor-exit.json``).

    ``error`` is set when the trainer could not even be started (exit code 127).
    """

    exit_code: int | None
    signal: str | None
    ended_at: float
    trainer_pid: int | None = None
    error: str | None = None
    leftovers_killed: list[int] = field(default_factory=list)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_monitor_start(path: str | Path) -> MonitorStart | None:
    """``monitor.json``, or ``None`` when absent or unreadable."""
    data: Any = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        boot = data.get("boot_id")
        trainer_started = data.get("trainer_started")
        return MonitorStart(monitor_pid=int(data["monitor_pid"]), trainer_pid=int(data["trainer_pid"]),
                            pgid=int(data["pgid"]), started_at=float(data.get("started_at", 0.0)),
                            boot_id=None if boot is None else str(boot),
                            trainer_started=None if trainer_started is None else float(trainer_started))
    except (KeyError, TypeError, ValueError):
        return None


def read_monitor_exit(path: str | Path) -> MonitorExit | None:
    """``monitor-exit.json``, or ``None`` when absent or unreadable."""
    data: Any = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        signal_name = data.get("signal")
        error = data.get("error")
        leftovers = data.get("leftovers_killed") or []
        return MonitorExit(exit_code=_optional_int(data.get("exit_code")),
                           signal=None if signal_name is None else str(signal_name),
                           ended_at=float(data.get("ended_at", 0.0)),
                           trainer_pid=_optional_int(data.get("trainer_pid")),
                           error=None if error is None else str(error),
                           leftovers_killed=[int(p) for p in leftovers])
    except (TypeError, ValueError):
        return None
