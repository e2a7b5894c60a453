"""The attempt-runner interface: value types and the ``AttemptRunner`` protocol.

Modelled on torch elastic's agent (``WorkerSpec`` / ``RunResult`` and the
narrow start / monitor / stop set under one loop): the loop hands a runner an
``AttemptSpec``, the runner starts the attempt's trainer processes wherever it
runs them, reports their end (and progress) into the loop's queue, and answers
``observe`` when the loop looks. Everything the runner needs to find its
processes again after a daemon restart lives in its **state**: a JSON object
it owns, persisted in the attempt's row (``attempts.runner_state``) next to its
kind (``attempts.runner_kind``). The loop stores that state and hands it back;
it never reads inside it.

Event-driven runners (local: pidfds) call ``notify`` the moment an attempt
ends; polled runners (Slurm: queue states) call it from their own poll thread.
Either way ``observe`` is the truth; a notice only says "look now".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from supervisor.access import RunAs
from supervisor.jobfiles.monitorfiles import MonitorExit

# How an attempt's processes ended, as the runner saw it (exit code / signal / error).
# Runners that are not local synthesize one (e.g. from Slurm's accounting).
AttemptExit = MonitorExit

# In every trainer's environment (value: the daemon's state dir), so the GPU pre-flight knows our orphans.
OWN_ENV_KEY = "ML_SUPERVISOR_STATE_DIR"

RunnerState = dict[str, Any]
"""A runner's own JSON state for one attempt (pids, a standby pid, a Slurm job id, ...)."""


class LaunchRefused(Exception):
    """The runner cannot start the attempt now (e.g. a trainer of the job still holds its lock).

    ``retry`` says whether the job should simply wait (True) or back off as a failed launch (False).
    """

    def __init__(self, reason: str, *, retry: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


@dataclass(frozen=True)
class RankLayout:
    """Which ranks an attempt runs: ``world_size`` ranks, ``local_ranks`` of them on each node.

    The local runner starts one process per local rank (DDP on one node); the Slurm
    runner spreads them over ``world_size / len(local_ranks)`` nodes.
    """

    world_size: int = 1
    local_ranks: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not self.local_ranks or self.world_size % len(self.local_ranks):
            raise ValueError(f"world_size {self.world_size} is not a multiple of {len(self.local_ranks)} local ranks")

    @property
    def nodes(self) -> int:
        return self.world_size // len(self.local_ranks)


@dataclass(frozen=True)
class AttemptSpec:
    """Everything a runner needs to start one attempt; built by the pure ``launch.attempt_spec``."""

    job_id: str
    attempt: int
    command: tuple[str, ...]  # the trainer's argv (the same for every rank; ranks differ by environment)
    env: Mapping[str, str]
    workdir: str
    attempt_dir: Path
    lock_path: Path  # the job's lock: held by the live attempt, so two trainers of one job never run
    gpus: tuple[int, ...] = ()
    resume_from: str | None = None
    deadline: float | None = None  # wall clock at which the budget is spent
    ranks: RankLayout = field(default_factory=RankLayout)
    # Runner-specific sections of the job config, as plain data (the Slurm runner reads "slurm").
    options: Mapping[str, Any] = field(default_factory=dict)
    # The job's owner when that is not the daemon's user (shared-server mode): the attempt runs as them.
    run_as: RunAs | None = None


@dataclass(frozen=True)
class AttemptRef:
    """One launched attempt as the loop knows it: enough for any runner to find it again."""

    job_id: str
    attempt: int
    attempt_dir: Path
    state: RunnerState


class Phase(StrEnum):
    """Where an attempt is, as its runner sees it."""

    PENDING = "pending"  # accepted, nothing runs yet (a Slurm job in the queue; a local monitor starting)
    RUNNING = "running"  # the trainer processes run
    ENDED = "ended"  # they ended; ``Observation.exit`` says how (None: vanished without a word)


@dataclass(frozen=True)
class Observation:
    """What a runner sees of an attempt when the loop looks (``observe``).

    ``state`` is the runner state to persist (it may have learned the trainer's
    pids since the launch); ``trainer_pid`` is for people (``status``).
    """

    phase: Phase
    state: RunnerState
    exit: AttemptExit | None = None
    trainer_pid: int | None = None
    boot_id: str | None = None  # the boot the attempt started in, when the runner knows it


@dataclass(frozen=True)
class RunnerNotice:
    """A notice into the loop's queue: something happened to ``(job_id, attempt)``; look now."""

    job_id: str
    kind: str  # "ended" | "progress"


Notify = Callable[[RunnerNotice], None]


@runtime_checkable
class AttemptRunner(Protocol):
    """Starts, watches, stops and adopts attempts. Called on the loop thread only."""

    kind: str  # persisted in attempts.runner_kind: the backend's name ("local", "slurm")

    def launch(self, spec: AttemptSpec) -> RunnerState:
        """Start the attempt; its state. Raises ``LaunchRefused`` or ``OSError`` when it cannot."""
        ...

    def adopt(self, ref: AttemptRef) -> Observation:
        """Take over an attempt started by an earlier daemon (watch it again); what is seen of it."""
        ...

    def observe(self, ref: AttemptRef) -> Observation:
        """Look at the attempt now (cheap: the loop calls it on every poll)."""
        ...

    def graceful_stop(self, ref: AttemptRef) -> None:
        """Ask the trainer to save and exit (SIGTERM to the trainer for the local runner)."""
        ...

    def request_checkpoint(self, ref: AttemptRef) -> bool:
        """Ask the trainer for a checkpoint at its next step, and to go on; False when it cannot be asked."""
        ...

    def dump_stacks(self, ref: AttemptRef, timeout_s: float) -> list[Path]:
        """Save every thread's stack of the trainer(s); the files written."""
        ...

    def kill(self, ref: AttemptRef) -> list[int]:
        """Kill every process of the attempt at once; the pids killed."""
        ...

    def clean_orphans(self, gpus: Sequence[int], earlier: Sequence[AttemptRef]) -> OrphanCheck:
        """Before a launch on ``gpus``: kill our orphans left on them; say whether the GPUs are free.

        ``earlier``: the job's earlier attempts; the runner reads its own state of each
        to know its processes (never by pid alone: a pid may be a stranger's by now).
        """
        ...

    def forget(self, job_id: str) -> None:
        """Close every handle the runner holds for the job (its attempt ended, or the job did)."""
        ...

    def release(self, job_id: str) -> None:
        """The job ended for good: give back what the runner held for its next attempt (a Slurm allocation)."""
        ...

    def tick(self) -> None:
        """Housekeeping at every tick of the loop (local: reap exited monitors; Slurm: poll the queue)."""
        ...

    def close(self) -> None:
        """Stop the runner's threads. Running trainers keep running, on purpose."""
        ...


@dataclass(frozen=True)
class OrphanCheck:
    """The GPU pre-flight's answer: ``ok`` when the GPUs are free (after killing our orphans)."""

    ok: bool
    reason: str = ""
    killed: tuple[int, ...] = ()


@runtime_checkable
class StandbyRunner(AttemptRunner, Protocol):
    """A runner that keeps a trainer process waiting, imports done, so a restart starts at once."""

    def prepare(self, spec: AttemptSpec) -> RunnerState:
        """Start a process that waits to become attempt ``spec.attempt`` (the job's one standby); its state."""
        ...

    def promote(self, job_id: str, spec: AttemptSpec) -> RunnerState | None:
        """Hand the job's waiting process attempt ``spec``; the attempt's state, or None when none is usable."""
        ...

    def has_standby(self, job_id: str) -> bool:
        """Whether the job has a standby, started or asked for."""
        ...

    def serve_pending(self, job_id: str) -> None:
        """Start a standby that was asked for and could not start yet (its zygote was still importing)."""
        ...

    def failed_prepares(self, job_id: str, attempt: int) -> int:
        """Standbys for ``attempt`` of the job that died before they were ready."""
        ...

    def drop_standby(self, job_id: str) -> None:
        """Kill the job's standby, if it has one."""
        ...

    def forget_job(self, job_id: str) -> None:
        """The job ended for good: no standby for it, nor anything kept to make one."""
        ...
