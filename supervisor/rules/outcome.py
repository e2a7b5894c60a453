"""How an attempt ended: the trainer's exit record, the runner's exit status and the daemon's own intent.

Exit codes cannot say "completed" (Lightning exits 0 after SIGTERM), so only an
exit record with status ``completed`` counts as completion. When the daemon
stopped the attempt itself (hang, GPU fault, budget, user), its intent names
the cause, unless the trainer completed first.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.errorline import exception_line
from supervisor.jobfiles.exitrecord import ExitRecord
from supervisor.jobfiles.monitorfiles import MonitorExit
from supervisor.rules.causes import Cause


@dataclass(frozen=True)
class Outcome:
    cause: Cause
    detail: str  # one line for people: "RuntimeError: CUDA error", "killed by SIGKILL", ...
    exit_code: int | None
    signal: str | None
    completion_reason: str | None = None  # the exit record's reason when completed: max_epochs, deadline, ...
    diverged_at: int | None = None  # cause diverged: the first bad step


def classify_end(record: ExitRecord | None, process_exit: MonitorExit | None, intent: Cause | None,
                 intent_detail: str | None = None) -> Outcome:
    """Combine what the trainer wrote, what its runner saw and what the daemon meant.

    ``process_exit`` None: the attempt's processes ended without anyone recording how.
    """
    exit_code = process_exit.exit_code if process_exit else None
    signal_name = process_exit.signal if process_exit else None
    if record is not None and record.status == "completed":
        return Outcome(Cause.COMPLETED, f"completed ({record.reason or 'finished'})", exit_code, signal_name,
                       completion_reason=record.reason)
    if record is not None and record.status == "config_error":
        return Outcome(Cause.CONFIG_ERROR, record.message or "config error", exit_code, signal_name)
    if record is not None and record.status == "diverged":  # the trainer's own verdict, before any intent
        return Outcome(Cause.DIVERGED, record.message or "the loss diverged", exit_code, signal_name,
                       diverged_at=record.diverged_at)
    if intent:
        return Outcome(Cause(intent), intent_detail or intent.replace("_", " "), exit_code, signal_name)
    if process_exit is not None and process_exit.error:
        return Outcome(Cause.CRASH, process_exit.error, exit_code, signal_name)
    if record is not None and record.status == "exception" and record.exception:
        return Outcome(Cause.CRASH, exception_line(record.exception), exit_code, signal_name)
    if record is not None and record.status == "signal":
        return Outcome(Cause.CRASH, f"stopped by {record.signal or 'a signal'} (not sent by the supervisor)",
                       exit_code, signal_name)
    if signal_name:
        return Outcome(Cause.CRASH, f"killed by {signal_name}", exit_code, signal_name)
    if exit_code == 0:
        return Outcome(Cause.CRASH, "exited 0 without an exit record", exit_code, signal_name)
    if exit_code is None:
        return Outcome(Cause.VANISHED, "the attempt's monitor vanished without an exit status", None, None)
    return Outcome(Cause.CRASH, f"exited with code {exit_code}", exit_code, signal_name)


_DISK_FULL_MARKS = ("disk full", "No space left on device", "[Errno 28]")


def is_disk_full(detail: str | None) -> bool:
    """Whether an attempt's detail says it failed because the disk was full (pure).

    The trainer says "cannot save checkpoint X: disk full (...)" and the attempt
    monitor quotes ``strerror`` ("No space left on device"); the policy then waits
    instead of counting a failure the job did not cause.
    """
    return bool(detail) and any(mark in str(detail) for mark in _DISK_FULL_MARKS)
