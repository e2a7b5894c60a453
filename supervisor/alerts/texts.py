"""The text of each alert: one builder per supervision event, from the event's facts.

``model.make_alert`` picks the builder; these say what happened, what the
supervisor did about it, and where to look, in lines a person reads on a phone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from supervisor.config.durations import format_duration

# Longest value shown in an alert text: a person reads these on a phone.
_MAX_VALUE_CHARS = 400


#
# Each builder writes: one sentence saying what happened and what the supervisor did,
# then "key: value" lines with the facts, then where to look. Keys a builder used are
# popped so the generic tail only shows the rest.


def _restart_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    attempt, previous = _attempts(f)
    who = f"Attempt {previous}" if previous is not None else "The trainer"
    relaunch = f"relaunched as attempt {attempt}." if attempt is not None else "relaunched."
    head = f"{who} ended ({_cause(f)}); {relaunch}"
    lines = [head, *_where(f)]
    restarts, max_restarts = f.pop("restarts", None), f.pop("max_restarts", None)
    if restarts is not None:
        lines.append(f"Restarts: {restarts}" + (f" of at most {max_restarts}" if max_restarts is not None else ""))
    if "message" in f:
        lines.append(f"Policy: {_short(str(f.pop('message')))}")
    resumed = _checkpoint(f, "resumed_from", "resumed_score", "resumed_step", none="scratch (no valid checkpoint)")
    if "previous_resumed_from" in f and "resumed_from" not in f and resumed.startswith("scratch"):
        # Told only what the ended attempt resumed from: the relaunch picks its checkpoint later.
        previous_from = f.pop("previous_resumed_from")
        lines.append(f"Ended attempt had resumed from: {_short(str(previous_from)) if previous_from else 'scratch'}")
    else:
        lines.append(f"Resumed from: {resumed}")
    delay = f.pop("delay_s", None)
    if delay:
        lines.append(f"Backoff before relaunch: {format_duration(float(delay))}")
    return _finish(lines, job, job_id, f)


def _where(f: dict[str, Any]) -> list[str]:
    """Where the relaunch went, when its backend told it (``Restarted inside allocation 1234 on n1,n3.``)."""
    where, failed = f.pop("where", None), f.pop("not_started", None)
    lines = [f"Restarted {_short(str(where))}."] if where else []
    return lines + ([f"Not relaunched yet: {_short(str(failed))}; retrying."] if failed else [])


def _hang_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    attempt, previous = _attempts(f)
    silent = f.pop("silent_s", None)
    timeout = f.pop("hang_timeout_s", None)
    who = f"Attempt {previous}" if previous is not None else "The trainer"
    head = f"{who} made no progress"
    if silent is not None:
        head += f" for {format_duration(float(silent))}"
    if timeout is not None:
        head += f" (hang timeout {format_duration(float(timeout))})"
    action = f.pop("action", None)
    if not action:
        action = f"stopped it and relaunched as attempt {attempt}" if attempt is not None else "stopped it"
    lines = [f"{head}; {action}.", *_where(f)]
    if str(f.get("cause", "")).lower() in ("hang", "hung"):
        f.pop("cause")
    if f.get("cause") or f.get("detail"):
        lines.append(f"Detail: {_cause(f)}")
    if "last_step" in f:
        lines.append(f"Last step: {f.pop('last_step')}")
    if "stacks" in f:
        lines.append(f"Stack dump: {f.pop('stacks')}")
    restarts = f.pop("restarts", None)
    if restarts is not None:
        lines.append(f"Restarts: {restarts}")
    if "message" in f:
        lines.append(f"Policy: {_short(str(f.pop('message')))}")
    delay = f.pop("delay_s", None)
    if delay:
        lines.append(f"Backoff before relaunch: {format_duration(float(delay))}")
    return _finish(lines, job, job_id, f)


def _gpu_fault_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    gpu = f.pop("gpu", None)
    fault = f.pop("fault", None) or "unhealthy"
    quarantined = f.pop("quarantined", None)
    head = f"GPU {gpu}: {fault}." if gpu is not None else f"A GPU of this job: {fault}."
    lines = [head]
    if quarantined is not None:
        lines.append("Quarantined: " + ("yes, no new job will be placed on it" if quarantined else "no"))
    if "attempt" in f:
        lines.append(f"Attempt: {f.pop('attempt')}")
    lines.append(f"Action: {f.pop('action', None) or 'stopped the attempt; it restarts on healthy GPUs'}")
    return _finish(lines, job, job_id, f)


def _failed_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    message, end_reason = f.pop("message", None), f.pop("end_reason", None)
    reason = f.pop("reason", None) or message or end_reason or "the restart policy gave up"
    reason = re.sub(r"^gave up[:,]?\s*", "", _short(str(reason)), flags=re.IGNORECASE).rstrip(".")
    lines = [f"Gave up: {reason}. The job will NOT be restarted."]
    _counts(lines, f)
    lines.append("Best checkpoint: " + _checkpoint(f, "best_checkpoint", "best_score", "best_step", none="none"))
    lines.append(f"Resubmit after a fix: supervisorctl submit <config> (history: supervisorctl history {job_id})")
    return _finish(lines, job, job_id, f)


def _ending(head: str, job: str, job_id: str, f: dict[str, Any]) -> str:
    """The text of a job that ended: what happened, why, how many attempts, and its best checkpoint."""
    lines = [head]
    _ending_reason(lines, f)
    _counts(lines, f)
    lines.append("Best checkpoint: " + _checkpoint(f, "best_checkpoint", "best_score", "best_step", none="none"))
    return _finish(lines, job, job_id, f)


def _budget_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    budget, elapsed = f.pop("budget_s", None), f.pop("elapsed_s", None)
    head = "Time budget spent"
    if budget is not None:
        head += f" ({format_duration(float(budget))}"
        head += f", used {format_duration(float(elapsed))})" if elapsed is not None else ")"
    return _ending(head + "; the job was stopped and keeps its best checkpoint as the result.", job, job_id, f)


def _completed_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    elapsed = f.pop("elapsed_s", None)
    head = "Training finished normally"
    if elapsed is not None:
        head += f" after {format_duration(float(elapsed))}"
    return _ending(head + ".", job, job_id, f)


def _stopped_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    by = f.pop("by", None)
    return _ending("Stopped on request" + (f" by {by}." if by else "."), job, job_id, f)


def _reboot_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    downtime = f.pop("downtime_s", None)
    head = "The node rebooted while this job was running"
    if downtime is not None:
        head += f" (down about {format_duration(float(downtime))})"
    lines = [head + "; the supervisor recovered it."]
    if "boot_id" in f or "previous_boot_id" in f:
        lines.append(f"Boot id: {f.pop('previous_boot_id', '?')} -> {f.pop('boot_id', '?')}")
    if "attempt" in f:
        lines.append(f"New attempt: {f.pop('attempt')}")
    if "resumed_from" in f:
        lines.append("Resumed from: " + _checkpoint(f, "resumed_from", "resumed_score", "resumed_step", none="scratch"))
    if "action" in f:
        lines.append(f"Action: {f.pop('action')}")
    jobs = f.pop("jobs", None)
    if jobs:
        shown = ", ".join(map(str, jobs)) if isinstance(jobs, list) else str(jobs)
        lines.append(f"Jobs recovered on this node: {shown}")
    return _finish(lines, job, job_id, f)


def _straggler_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    lines = [str(f.pop("message", "a rank is running slower than its peers"))]
    action = f.pop("action", None)
    if action == "restart_without":
        lines.append("Action: its GPU was quarantined and the job relaunched without it.")
    context = f.pop("gpu_context", None)
    if isinstance(context, dict) and context:
        lines.append("GPU: " + ", ".join(f"{k}={v}" for k, v in context.items()))
    return _finish(lines, job, job_id, f)


def _resize_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    return _finish([str(f.pop("message", "the job changed its world size"))], job, job_id, f)


_ENDING_EVENTS = frozenset({"failed", "budget", "completed", "stopped"})

TEXT_BUILDERS = {
    "restart": _restart_text,
    "hang": _hang_text,
    "gpu_fault": _gpu_fault_text,
    "failed": _failed_text,
    "budget": _budget_text,
    "completed": _completed_text,
    "stopped": _stopped_text,
    "reboot": _reboot_text,
    "straggler": _straggler_text,
    "resize": _resize_text,
}


def normalise(event: str, details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` with the core's own key names mapped onto the ones the texts use."""
    facts = dict(details)
    if "delay" in facts and "delay_s" not in facts:
        facts["delay_s"] = facts.pop("delay")
    if event in _ENDING_EVENTS:
        for short, full in (("score", "best_score"), ("step", "best_step")):
            if short in facts and full not in facts:
                facts[full] = facts.pop(short)
    return facts


def _attempts(f: dict[str, Any]) -> tuple[Any, Any]:
    """(new attempt, ended attempt) of a restart or hang."""
    attempt = f.pop("attempt", None)
    previous = f.pop("previous_attempt", None)
    if previous is None and isinstance(attempt, int) and attempt > 1:
        previous = attempt - 1
    return attempt, previous


def _cause(f: dict[str, Any]) -> str:
    """``cause`` and ``detail`` as one phrase: "crash: exit code 1 (RuntimeError: ...)"."""
    cause = str(f.pop("cause", None) or "").strip()
    detail = str(f.pop("detail", None) or "").strip()
    if cause and detail and cause.lower() not in detail.lower():
        return _short(f"{cause}: {detail}")
    return _short(detail or cause or "cause unknown")


def _ending_reason(lines: list[str], f: dict[str, Any]) -> None:
    message, end_reason = f.pop("message", None), f.pop("end_reason", None)
    if message or end_reason:
        lines.append(f"Reason: {_short(str(message or end_reason))}")


def _counts(lines: list[str], f: dict[str, Any]) -> None:
    parts = []
    for key, label in (("attempts", "attempts"), ("restarts", "restarts")):
        if key in f:
            parts.append(f"{f.pop(key)} {label}")
    if parts:
        lines.append("Ran: " + ", ".join(parts))


def _checkpoint(f: dict[str, Any], path_key: str, score_key: str, step_key: str, *, none: str) -> str:
    path = f.pop(path_key, None)
    score, step = f.pop(score_key, None), f.pop(step_key, None)
    monitor = f.pop("monitor", None)
    if not path:
        return none
    extra = []
    if score is not None:
        extra.append(f"{monitor or 'score'}={_value(score)}")
    if step is not None:
        extra.append(f"step {step}")
    return _short(str(path)) + (f" ({', '.join(extra)})" if extra else "")


def _finish(lines: list[str], job: str, job_id: str, f: dict[str, Any]) -> str:
    """Common tail: GPUs, last error, logs, the rest of the details, then job and host."""
    gpus = f.pop("gpus", None)
    if gpus is None:
        gpus = f.pop("gpu", None)
    if gpus not in (None, [], ""):
        shown = ", ".join(str(g) for g in gpus) if isinstance(gpus, (list, tuple)) else str(gpus)
        lines.append(f"GPU: {shown}")
    error = f.pop("error", None)
    if error:
        lines.append(f"Last error: {_short(str(error))}")
    logs = f.pop("logs", None)
    host = f.pop("host", None)
    for key in sorted(f):
        value = f[key]
        if value is None:
            continue
        if key.endswith("_s") and isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{key[:-2]}: {format_duration(float(value))}")  # seconds read better as 1h05m
        else:
            lines.append(f"{key}: {_value(value)}")
    lines.append(f"Job: {job} (id {job_id}) on {host}")
    lines.append(f"Logs: {logs}" if logs else f"Logs: supervisorctl logs {job_id}")
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return _short(str(value))


def _short(text: str) -> str:
    text = " ".join(text.split())  # one line: W&B and Slack show the first lines on a phone
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 1] + "…"


def jsonable(facts: Mapping[str, Any]) -> dict[str, Any]:
    """``facts`` with every value JSON-representable (paths and odd objects become strings)."""
    out: dict[str, Any] = {}
    for key, value in facts.items():
        if value is None or isinstance(value, (bool, int, str)):
            out[str(key)] = value
        elif isinstance(value, float):
            out[str(key)] = value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        elif isinstance(value, (list, tuple)):
            out[str(key)] = [v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for v in value]
        else:
            out[str(key)] = str(value)
    return out
