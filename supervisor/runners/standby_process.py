"""One standby of the local runner: its record, its status file, and the checks and kills done on its processes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from supervisor.jobfiles.atomic import read_json, write_json_atomic
from supervisor.jobfiles.deadline import FileStalled
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.jobfiles.monitorfiles import read_monitor_start
from supervisor.jobfiles.safe_read import lstat, stat_following
from supervisor.jobfiles.standbyfiles import HANDOVER_FILE
from supervisor.processes.control import MONITOR_MODULE, ProcessHandle, kill_tree, reap_monitors
from supervisor.processes.ports import DEFAULT_PORT_WAIT_S
from supervisor.runners.base import OWN_ENV_KEY, LaunchRefused
from supervisor.runners.local import RANK_STOP_GRACE_S
from supervisor.runners.zygote import ZYGOTE_MODULE

log = logging.getLogger("ml_supervisor")

STANDBY_ENV = "ML_SUPERVISOR_STANDBY"  # value: the job id; marks a standby's processes
VIEW_FILE = "standby.json"  # in the job dir: what status shows
MONITOR_EXIT_WAIT_S = 2.0


class StandbyState:
    """The states ``status`` shows."""

    PREPARING = "preparing"
    READY = "ready"
    PROMOTING = "promoting"
    STALE = "stale"


@dataclass
class Standby:
    """One waiting trainer: attempt ``attempt`` of ``job_id``, not started yet."""

    job_id: str
    attempt: int
    attempt_dir: Path
    job_dir: Path
    monitor_pid: int
    monitor_started: float
    config_path: Path
    config_mtime: float
    handle: ProcessHandle
    world_size: int = 1  # ranks (one process each)
    state: str = StandbyState.PREPARING
    modules: dict[str, float] = field(default_factory=dict)
    trainer_pid: int | None = None


def publish_view(job_dir: Path, state: str, attempt: int, monitor_pid: int | None, pid: int | None,
                  attempt_dir: Path) -> None:
    write_json_atomic(job_dir / VIEW_FILE, {"state": state, "attempt": attempt, "monitor_pid": monitor_pid,
                                            "pid": pid, "attempt_dir": str(attempt_dir)}, durable=False)


def monitor_args(world_size: int) -> list[str]:
    args = ["--standby"]
    if world_size > 1:
        args += ["--nproc-per-node", str(world_size), "--rank-stop-grace", str(RANK_STOP_GRACE_S)]
    return args


def standby_view(job_dir: Path) -> dict[str, Any] | None:
    """``status``'s ``standby``: ``{state, pid, rss_mb}`` of the job's standby, or None.

    ``pid`` is rank 0's. A standby of several ranks adds ``ranks`` (``[{rank, pid, rss_mb}]``), and its
    ``rss_mb`` is their sum: the memory the node gives to having a standby at all.
    """
    data = read_json(job_dir / VIEW_FILE)
    if not isinstance(data, dict):
        return None
    started = read_monitor_start(AttemptLayout(Path(str(data.get("attempt_dir")))).monitor_start)
    pids = started.pids() if started is not None else {}
    pid = data.get("pid") or pids.get(0)  # still importing: the trainer's pid is only in monitor.json
    if not pid:
        return {"state": data.get("state"), "pid": None, "rss_mb": None}
    ranks = []
    for rank, rank_pid in sorted((pids or {0: int(pid)}).items()):
        try:
            rss = psutil.Process(int(rank_pid)).memory_info().rss / 2**20
        except psutil.Error:
            return None  # a rank is gone: the runner drops the standby at its next tick
        ranks.append({"rank": rank, "pid": rank_pid, "rss_mb": round(rss, 1)})
    view: dict[str, Any] = {"state": data.get("state"), "pid": pid,
                            "rss_mb": round(sum(r["rss_mb"] for r in ranks), 1)}
    if len(ranks) > 1:
        view["ranks"] = ranks
    return view


def kill_leftover_standbys(state_dir: Path) -> list[int]:
    """Kill the standbys an earlier daemon of ``state_dir`` left (never adopted) and remove their dirs."""
    killed: list[int] = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        zygote = cmdline[1:3] == ["-m", ZYGOTE_MODULE]
        if not zygote and (MONITOR_MODULE not in cmdline or "--standby" not in cmdline):
            continue
        try:
            env = proc.environ()
        except psutil.Error:
            continue
        if STANDBY_ENV not in env or env.get(OWN_ENV_KEY) != str(state_dir):
            continue
        if zygote:  # it exits once it sees our predecessor's pipe closed; it may still be importing
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.Error:
                pass
            continue
        attempt_dir = Path(cmdline[cmdline.index("--attempt-dir") + 1])
        try:
            if lstat(attempt_dir / HANDOVER_FILE) is not None:
                continue  # promoted: a live attempt, adopted like any other
            started = read_monitor_start(AttemptLayout(attempt_dir).monitor_start)
        except FileStalled:  # cannot tell whether it was promoted: never kill a live attempt on a guess
            log.warning("cannot tell whether the standby in %s was promoted (its files do not answer): left alone",
                        attempt_dir)
            continue
        killed += kill_tree(proc.pid, started.pgid if started is not None else None)
        try:
            proc.kill()
            proc.wait(MONITOR_EXIT_WAIT_S)
        except psutil.Error:
            pass
        killed.append(proc.pid)
        shutil.rmtree(attempt_dir, ignore_errors=True)
        remove_file(attempt_dir.parent.parent / VIEW_FILE)
        log.info("killed the standby an earlier daemon left in %s", attempt_dir)
    return killed


def restore_priority(standby: Standby) -> None:
    """Give every thread of the standby's ranks its monitor's niceness (they lowered their own while preparing)."""
    try:
        monitor = psutil.Process(standby.monitor_pid)
        base = monitor.nice()
        for proc in monitor.children(recursive=True):  # every rank, and anything a rank started
            for thread in proc.threads():  # niceness is per thread on Linux
                if os.getpriority(os.PRIO_PROCESS, thread.id) != base:
                    os.setpriority(os.PRIO_PROCESS, thread.id, base)
    except (psutil.Error, OSError) as exc:  # a thread that just ended; or no right to (not root): it trains niced
        log.warning("job %s: could not restore the promoted standby's priority: %s", standby.job_id, exc)


def kill_monitor(standby: Standby) -> None:
    """SIGKILL the standby's monitor (it ignores SIGTERM) and wait for it, so its files are final."""
    try:
        os.kill(standby.monitor_pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + MONITOR_EXIT_WAIT_S
    while standby.handle.alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    standby.handle.close()
    reap_monitors()


def busy_port_refusal(port: int, busy_for_s: float, wait_s: float = DEFAULT_PORT_WAIT_S) -> LaunchRefused:
    """Why a promotion does not start while a job's fixed ``MASTER_PORT`` is held: retried within ``wait_s``
    (the previous attempt's ranks are still leaving), then a failed launch, as a cold monitor fails after
    waiting as long (the job backs off and tries again, with an event that says why)."""
    if busy_for_s < wait_s:
        return LaunchRefused(f"MASTER_PORT {port} is still in use", retry=True)
    return LaunchRefused(f"MASTER_PORT {port} is still in use after {busy_for_s:.0f}s", retry=False)


def ranks_broken(standby: Standby) -> str | None:
    """Why a multi-rank standby cannot take over as a whole (a rank not a live child of its monitor), or None."""
    if standby.world_size <= 1:
        return None
    started = read_monitor_start(AttemptLayout(standby.attempt_dir).monitor_start)
    if started is None:
        return "its monitor has not recorded its ranks yet"
    try:
        children = {child.pid: child for child in psutil.Process(standby.monitor_pid).children()}
    except psutil.Error:
        children = {}
    dead = []
    for rank, pid in sorted(started.pids().items()):
        try:
            if pid not in children or children[pid].status() == psutil.STATUS_ZOMBIE:
                dead.append(rank)
        except psutil.Error:
            dead.append(rank)
    return f"its rank(s) {', '.join(map(str, dead))} died" if dead else None


def config_of(command: tuple[str, ...]) -> Path:
    return Path(command[command.index("--config") + 1])


def mtime(path: Path) -> float:
    """``path``'s mtime (through links: a user's module may be one), -1 when it is gone; ``FileStalled``
    when its filesystem does not answer (unknown, not changed)."""
    try:
        info = stat_following(path)
    except FileStalled:
        raise
    except OSError:
        return -1.0
    return info.st_mtime if info is not None else -1.0


def remove_file(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
