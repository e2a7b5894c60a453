"""How an attempt ended: the trainer's exit record, the monitor's exit status and the daemon's own intent.

Exit codes cannot say "completed" (Lightning exits 0 after SIGTERM), so only an
exit record with status ``completed`` counts as completion. When the daemon
stopped the attempt itself (hang, GPU fault, budget, user), its intent names
the cause, unless the trainer completed first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from supervisor.errorline import exception_line
from supervisor.jobfiles.exitrecord import ExitRecord


@dataclass(frozen=True)
class Outcome:
    cause: str  # a policy cause: completed, crash, hang, gpu_fault, vanished, reboot, user_stop, ...
    detail: str  # one line for people: "RuntimeError: CUDA error", "killed by SIGKILL", ...
    exit_code: int | None
    signal: str | None
    completion_reason: str | None = None


def classify_end(record: ExitRecord | None, monitor_exit: dict[str, Any] | None, intent: str | None,
                 intent_detail: str | None = None) -> Outcome:
    """Combine what the trainer wrote, what its monitor saw and what the daemon meant."""
    exit_code = monitor_exit.get("exit_code") if monitor_exit else None
    signal_name = monitor_exit.get("signal") if monitor_exit else None
    if record is not None and record.status == "completed":
        return Outcome("completed", f"completed ({record.reason or 'finished'})", exit_code, signal_name,
                       completion_reason=record.reason)
    if record is not None and record.status == "config_error":
        return Outcome("config_error", record.message or "config error", exit_code, signal_name)
    if intent:
        return Outcome(intent, intent_detail or intent.replace("_", " "), exit_code, signal_name)
    if monitor_exit is not None and monitor_exit.get("error"):
        return Outcome("crash", str(monitor_exit["error"]), exit_code, signal_name)
    if record is not None and record.status == "exception" and record.exception:
        return Outcome("crash", exception_line(record.exception), exit_code, signal_name)
    if record is not None and record.status == "signal":
        return Outcome("crash", f"stopped by {record.signal or 'a signal'} (not sent by the supervisor)", exit_code,
                       signal_name)
    if signal_name:
        return Outcome("crash", f"killed by {signal_name}", exit_code, signal_name)
    if exit_code == 0:
        return Outcome("crash", "exited 0 without an exit record", exit_code, signal_name)
    if exit_code is None:
        return Outcome("vanished", "the attempt's monitor vanished without an exit status", None, None)
    return Outcome("crash", f"exited with code {exit_code}", exit_code, signal_name)
