"""Slurm's job states in the supervisor's words, and the parsing of what Slurm's commands print (pure).

``phase_of`` says where an attempt is (pending / running / ended) for a Slurm
state; ``ending_of`` the one line a Slurm-side ending contributes to the
attempt's detail (an exit record or exit code says the rest). ``parse_squeue``
reads ``squeue -o "%i|%T|%N|%j"``; ``end_exit`` turns the batch script's end
record and the last state seen into the runner's ``AttemptExit``.
"""

from __future__ import annotations

import signal as signal_module
from dataclasses import dataclass
from typing import Any

from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.rules.causes import Cause
from supervisor.runners.base import Phase

SQUEUE_FORMAT = "%i|%T|%N|%j"

PENDING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING"})


@dataclass(frozen=True)
class SlurmEnding:
    """What a terminal Slurm state means for the attempt, when nothing else says more."""

    cause: Cause
    text: str  # "" when the exit code / exit record tell the story better
    failure: bool  # counts as a failure of the attempt (not the trainer's own completion)


# The case table (docs/slurm.md): every terminal state Slurm reports.
ENDINGS: dict[str, SlurmEnding] = {
    "COMPLETED": SlurmEnding(Cause.COMPLETED, "", False),
    "FAILED": SlurmEnding(Cause.CRASH, "", True),
    "CANCELLED": SlurmEnding(Cause.CRASH, "cancelled outside the supervisor (scancel)", True),
    "TIMEOUT": SlurmEnding(Cause.CRASH, "reached the allocation's time limit (slurm.time)", True),
    "NODE_FAIL": SlurmEnding(Cause.CRASH, "a node of the allocation failed (NODE_FAIL)", True),
    "PREEMPTED": SlurmEnding(Cause.CRASH, "preempted by another job", True),
    "OUT_OF_MEMORY": SlurmEnding(Cause.CRASH, "a rank ran out of memory (OUT_OF_MEMORY)", True),
    "BOOT_FAIL": SlurmEnding(Cause.CRASH, "a node failed to boot (BOOT_FAIL)", True),
    "DEADLINE": SlurmEnding(Cause.CRASH, "reached its Slurm deadline", True),
    "SPECIAL_EXIT": SlurmEnding(Cause.CRASH, "held by Slurm (SPECIAL_EXIT)", True),
    "REVOKED": SlurmEnding(Cause.CRASH, "revoked (federation)", True),
}


def phase_of(state: str | None) -> Phase | None:
    """The attempt's phase for a Slurm state; None when the state is unknown (or Slurm forgot the job)."""
    if state is None:
        return None
    state = state.split()[0].rstrip("+").upper()  # "CANCELLED by 0", "RUNNING+" (sacct)
    if state in PENDING_STATES:
        return Phase.PENDING
    if state in RUNNING_STATES:
        return Phase.RUNNING
    if state in ENDINGS:
        return Phase.ENDED
    return None


def ending_of(state: str) -> SlurmEnding:
    """The ending of a terminal Slurm state (unknown states read as a crash that names them)."""
    key = state.split()[0].rstrip("+").upper()
    return ENDINGS.get(key, SlurmEnding(Cause.CRASH, f"ended in the Slurm state {key}", True))


@dataclass(frozen=True)
class QueueEntry:
    """One line of ``squeue``: a Slurm job as the controller still remembers it."""

    slurm_job_id: str
    state: str
    nodes: str
    name: str


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """``squeue -h -o "%i|%T|%N|%j"`` output -> entries by Slurm job id (malformed lines are skipped)."""
    entries: dict[str, QueueEntry] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0]:
            continue
        entries[parts[0]] = QueueEntry(parts[0], parts[1].strip(), parts[2].strip(), parts[3].strip())
    return entries


def parse_sbatch(text: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``: the job id (ValueError when it is not one)."""
    job_id = text.strip().split(";")[0]
    if not job_id.isdigit():
        raise ValueError(f"sbatch printed {text.strip()!r}, not a job id")
    return job_id


def _signal_name(number: int) -> str | None:
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return None


def end_exit(record: dict[str, Any] | None, state: str | None, *, now: float) -> MonitorExit | None:
    """How the attempt ended, from the batch script's end record and the last Slurm state seen.

    None when neither says anything (the attempt vanished: Slurm forgot it and no record was written).
    """
    if record is None and state is None:
        return None
    exit_code: int | None = None
    signal_name: str | None = None
    ended_at = now
    if record is not None:
        try:
            exit_code = int(record["exit_code"])
            ended_at = float(record.get("ended_at") or now)
        except (KeyError, TypeError, ValueError):
            exit_code = None
        if exit_code is not None and exit_code > 128:  # srun reports a rank killed by signal N as 128+N
            signal_name = _signal_name(exit_code - 128)
    error: str | None = None
    if state is not None:
        ending = ending_of(state)
        if ending.text and ending.failure:
            error = f"Slurm: {ending.text}"
    if record is None and error is None:
        # The batch script itself was killed before it could write its end record.
        error = f"Slurm: the batch script ended ({state}) without an end record"
    return MonitorExit(exit_code=exit_code, signal=signal_name, ended_at=ended_at, error=error)
