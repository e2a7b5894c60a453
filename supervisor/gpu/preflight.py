"""Pre-flight before a launch: the GPUs we are about to hand over must hold no process.

A process of ours (a process the daemon knows from an earlier attempt, by pid
*and* start time, one of its descendants, or one carrying our environment
marker) is an orphan: it is
killed and its memory is waited for. Anything else is a foreign process: the
launch waits, with a reason that names it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import psutil

from supervisor.gpu.backend import GpuBackend, GpuLost, GpuProcess
from supervisor.gpu.types import GpuReadError
from supervisor.processes.control import is_same_process


@dataclass(frozen=True)
class PreflightResult:
    """``ok``: the GPUs are free. Otherwise ``reasons`` say why, one line per problem."""

    ok: bool
    reasons: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """All reasons on one line (empty when ok)."""
        return "; ".join(self.reasons)


def preflight(indices: Sequence[int], backend: GpuBackend, own: Mapping[int, float] | None = None, *,
              kill_own: bool = True, wait_s: float = 30.0, own_env_key: str | None = None,
              own_env_value: str | None = None, poll_s: float = 0.2,
              clock: Callable[[], float] = time.monotonic) -> PreflightResult:
    """Check (and clean) the GPUs ``indices`` before an attempt starts on them.

    Our orphans are SIGKILLed with their descendants when ``kill_own``, then we
    wait up to ``wait_s`` for them to leave the GPU's process list (that is
    when the driver has freed their memory). Foreign processes, a lost GPU, or
    orphans that outlive the wait make the result not ok.

    ``own_env_key``: a variable the daemon sets in every trainer's environment;
    a process that has it (with the value ``own_env_value``, when given: e.g.
    the state dir, so two daemons on one node never take each other's
    trainers for orphans) is ours even after its parent died, when its parent
    chain no longer leads to a pid we know. Another user's environment cannot
    be read, so such a process counts as foreign.
    """
    own = dict(own or {})
    reasons: list[str] = []
    killed: list[int] = []
    orphans: dict[int, set[int]] = {}  # gpu index -> pids of our orphans on it
    for index in indices:
        try:
            reading = backend.read(index)
        except (GpuLost, GpuReadError) as failed:  # lost, or unreadable just now: wait either way
            reasons.append(f"gpu {index}: {failed.reason}")
            continue
        for proc in reading.processes:
            if _is_ours(proc.pid, own, own_env_key, own_env_value):
                orphans.setdefault(index, set()).add(proc.pid)
            else:
                reasons.append(f"gpu {index}: foreign process {proc.pid} ({_name(proc.pid)}) holds "
                               f"{_mib_text(proc)}")
    if not orphans:
        return PreflightResult(ok=not reasons, reasons=reasons)
    if not kill_own:
        for index, pids in sorted(orphans.items()):
            reasons.extend(f"gpu {index}: process {pid} ({_name(pid)}) of an earlier attempt is still running"
                           for pid in sorted(pids))
        return PreflightResult(ok=False, reasons=reasons)
    for pids in orphans.values():
        for pid in sorted(pids):
            killed.extend(_kill_tree(pid))
    reasons.extend(_wait_released(orphans, backend, wait_s, poll_s, clock))
    return PreflightResult(ok=not reasons, reasons=reasons, killed=sorted(set(killed)))


def _is_ours(pid: int, own: dict[int, float], env_key: str | None, env_value: str | None) -> bool:
    if pid in own and is_same_process(pid, own[pid]):
        return True
    # init and the daemon itself are ancestors of everything (or of every live attempt): never a reason
    ancestors_of_ours = {p: t for p, t in own.items() if p not in (0, 1, os.getpid())}
    try:
        proc = psutil.Process(pid)
        if any(parent.pid in ancestors_of_ours and is_same_process(parent.pid, ancestors_of_ours[parent.pid])
               for parent in proc.parents()):
            return True
        if env_key is not None:
            environ = proc.environ()
            return env_key in environ and (env_value is None or environ[env_key] == env_value)
    except psutil.Error:  # gone, or another user's (no permission): not ours to touch
        return False
    return False


def _kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and its descendants; the pids signalled."""
    try:
        root = psutil.Process(pid)
        victims = [root, *root.children(recursive=True)]
    except psutil.Error:
        return []
    done = []
    for proc in victims:
        try:
            proc.kill()
            done.append(proc.pid)
        except psutil.Error:
            continue
    return done


def _wait_released(orphans: dict[int, set[int]], backend: GpuBackend, wait_s: float, poll_s: float,
                   clock: Callable[[], float]) -> list[str]:
    """Wait until no killed orphan is listed on its GPU; the reasons for those still listed at the deadline."""
    deadline = clock() + wait_s
    while True:
        remaining: dict[int, set[int]] = {}
        lost: list[str] = []
        for index, pids in orphans.items():
            try:
                listed = {p.pid for p in backend.read(index).processes}
            except (GpuLost, GpuReadError) as exc:
                lost.append(f"gpu {index}: {exc.reason}")
                continue
            if listed & pids:
                remaining[index] = listed & pids
        if lost:
            return lost
        if not remaining:
            return []
        if clock() >= deadline:
            return [f"gpu {index}: memory of killed process {pid} not released after {wait_s:.0f}s"
                    for index, pids in sorted(remaining.items()) for pid in sorted(pids)]
        time.sleep(poll_s)


def _name(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "?"  # e.g. a process in another pid namespace (NVML reports host pids)


def _mib_text(proc: GpuProcess) -> str:
    return f"{proc.used_mib} MiB" if proc.used_mib is not None else "memory"
