"""The attempt monitor's two files: ``monitor.json`` (started) and ``monitor-exit.json`` (ended).

Both are written durably by ``supervisor.processes.attempt_monitor`` and read by the local runner
with typed readers like the exit record's: a missing, torn or foreign file reads as
``None``, never as an exception. The top-level keys
are those of a single-process attempt, so readers that know nothing of ranks
keep working: ``trainer_pid`` and ``pgid`` are rank 0's (every rank is in
rank 0's process group), ``exit_code``/``signal`` are those of the rank that
ended first (the attempt's culprit), ``ended_at`` is when the last rank ended.
A multi-rank attempt adds ``world_size`` and a ``ranks`` list:

    monitor.json       {"monitor_pid": 10, "trainer_pid": 11, "pgid": 11, "started_at": 1.7e9, "boot_id": "...",
                        "trainer_started": 1.7e9,
                        "world_size": 2, "master_addr": "127.0.0.1", "master_port": 29517,
                        "ranks": [{"rank": 0, "local_rank": 0, "pid": 11}, {"rank": 1, "local_rank": 1, "pid": 12}]}
    monitor-exit.json  {"exit_code": null, "signal": "SIGKILL", "ended_at": 1.7e9, "trainer_pid": 11,
                        "leftovers_killed": [], "world_size": 2, "first_rank": 1,
                        "ranks": [{"rank": 0, "pid": 11, "exit_code": 1, "signal": null, "ended_at": 1.7e9,
                                   "stopped_by": "SIGTERM"},
                                  {"rank": 1, "pid": 12, "exit_code": null, "signal": "SIGKILL", "ended_at": 1.7e9,
                                   "stopped_by": null}]}

``trainer_started`` is rank 0's start time as psutil reads it (``create_time``):
with its pid and the boot id, the trainer's identity (nothing is signalled on a pid
alone). ``stopped_by`` is the signal the monitor itself last sent that rank after
another rank ended (``null``: it ended on its own). Files written before ranks
existed read as one rank 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json, write_json_atomic


@dataclass(frozen=True)
class RankProcess:
    """One rank's trainer process, as started."""

    rank: int
    local_rank: int
    pid: int


@dataclass(frozen=True)
class RankEnding:
    """How one rank's process ended, as its parent (the monitor) saw it."""

    rank: int
    pid: int | None
    exit_code: int | None  # None when killed by a signal
    signal: str | None  # "SIGKILL", ... when killed by a signal
    ended_at: float
    stopped_by: str | None = None  # the signal the monitor sent it after another rank ended


@dataclass
class MonitorStart:
    """``monitor.json``."""

    monitor_pid: int
    trainer_pid: int
    pgid: int
    started_at: float
    boot_id: str | None = None  # None: a file written before the monitor knew it
    subreaper: bool = False
    command: list[str] = field(default_factory=list)
    world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    ranks: list[RankProcess] = field(default_factory=list)
    trainer_started: float | None = None  # rank 0's psutil create_time (None: a file from before it was kept)

    def pids(self) -> dict[int, int]:
        """Global rank -> pid."""
        return {r.rank: r.pid for r in self.ranks}


@dataclass
class MonitorExit:
    """``monitor-exit.json``."""

    exit_code: int | None
    signal: str | None
    ended_at: float
    trainer_pid: int | None = None
    leftovers_killed: list[int] = field(default_factory=list)
    error: str | None = None
    world_size: int = 1
    first_rank: int | None = None  # the rank that ended first: the attempt's culprit unless a stop was asked for
    ranks: list[RankEnding] = field(default_factory=list)


def write_monitor_start(path: str | Path, start: MonitorStart) -> None:
    """Write ``monitor.json`` durably."""
    write_json_atomic(path, asdict(start))


def write_monitor_exit(path: str | Path, end: MonitorExit) -> None:
    """Write ``monitor-exit.json`` durably (the daemon's proof of how every rank ended)."""
    data = asdict(end)
    if data["error"] is None:
        del data["error"]  # readers test ``get("error")``; keep the single-process file as it was
    write_json_atomic(path, data)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def read_monitor_start(path: str | Path) -> MonitorStart | None:
    """``monitor.json``, or ``None`` when missing or unreadable; an old file reads as one rank 0."""
    data: Any = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        trainer_pid = int(data["trainer_pid"])
        ranks = [RankProcess(rank=int(r["rank"]), local_rank=int(r.get("local_rank", r["rank"])), pid=int(r["pid"]))
                 for r in data.get("ranks") or []]
        return MonitorStart(
            monitor_pid=int(data["monitor_pid"]),
            trainer_pid=trainer_pid,
            pgid=int(data.get("pgid", trainer_pid)),
            started_at=float(data.get("started_at", 0.0)),
            boot_id=None if data.get("boot_id") is None else str(data["boot_id"]),
            subreaper=bool(data.get("subreaper", False)),
            command=[str(c) for c in data.get("command") or []],
            world_size=int(data.get("world_size", 1)),
            master_addr=data.get("master_addr"),
            master_port=_opt_int(data.get("master_port")),
            ranks=ranks or [RankProcess(rank=0, local_rank=0, pid=trainer_pid)],
            trainer_started=_opt_float(data.get("trainer_started")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def read_monitor_exit(path: str | Path) -> MonitorExit | None:
    """``monitor-exit.json``, or ``None`` when missing or unreadable; an old file reads as one rank 0."""
    data: Any = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        trainer_pid = _opt_int(data.get("trainer_pid"))
        ended_at = float(data.get("ended_at", 0.0))
        ranks = [RankEnding(rank=int(r["rank"]), pid=_opt_int(r.get("pid")), exit_code=_opt_int(r.get("exit_code")),
                            signal=r.get("signal"), ended_at=float(r.get("ended_at", ended_at)),
                            stopped_by=r.get("stopped_by"))
                 for r in data.get("ranks") or []]
        exit_code, signal_name = _opt_int(data.get("exit_code")), data.get("signal")
        if not ranks and (trainer_pid is not None or exit_code is not None or signal_name is not None):
            ranks = [RankEnding(rank=0, pid=trainer_pid, exit_code=exit_code, signal=signal_name, ended_at=ended_at)]
        first = data.get("first_rank")
        return MonitorExit(
            exit_code=exit_code,
            signal=signal_name,
            ended_at=ended_at,
            trainer_pid=trainer_pid,
            leftovers_killed=[int(p) for p in data.get("leftovers_killed") or []],
            error=data.get("error"),
            world_size=int(data.get("world_size", 1)),
            first_rank=int(first) if first is not None else (0 if ranks else None),
            ranks=ranks,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)
