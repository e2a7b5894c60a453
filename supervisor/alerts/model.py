"""What an alert is, and how each supervision event becomes one a person can act on at 3 a.m.

``make_alert`` is the one place that turns an event and its details into a title,
a text and a level. Titles are STABLE per job and event (no attempt number, no
cause): W&B's ``wait_duration`` and the webhook throttle both key on the title,
which is what stops a crash loop from flooding anyone. The changing facts go in
the text.

Nothing here imports wandb: the daemon builds alerts, a worker subprocess sends them.
"""

from __future__ import annotations

import re
import socket
import time as _time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.config.durations import format_duration
from supervisor.config.schema import ALERT_EVENTS, DEFAULT_ALERTS

LEVELS = ("INFO", "WARN", "ERROR")

# Suffix of the W&B run that carries a job's alerts (see WandbTarget.alert_run_id).
ALERT_RUN_SUFFIX = "-supervisor"

# event -> (words in the title, level)
_EVENT_TITLES: dict[str, tuple[str, str]] = {
    "restart": ("restarted", "WARN"),
    "hang": ("hung", "WARN"),
    "gpu_fault": ("GPU fault", "ERROR"),
    "failed": ("failed, gave up", "ERROR"),
    "budget": ("time budget reached", "INFO"),
    "completed": ("completed", "INFO"),
    "stopped": ("stopped", "INFO"),
    "reboot": ("recovered after a node reboot", "WARN"),
}
assert set(_EVENT_TITLES) == set(ALERT_EVENTS), "every configurable alert event needs a title"

# Longest value shown in an alert text: a person reads these on a phone.
_MAX_VALUE_CHARS = 400


@dataclass(frozen=True)
class WandbTarget:
    """Where a job's alerts go in W&B: the job's project and group, beside its training run.

    The trainer owns the run ``run_id`` (every attempt resumes it). Two processes
    must never write one run id at once, so alerts go to a small separate run,
    ``alert_run_id`` (``<run_id>-supervisor``), in the same project and group and
    the same wandb ``dir``; it is resumed for every batch of alerts.
    ``mode`` is the job's configured mode: "online" (falls back to offline without
    an API key), "offline" (written to the run file for ``wandb sync``) or
    "disabled" (no W&B delivery at all).
    """

    project: str
    entity: str | None
    group: str | None
    run_id: str
    dir: str
    mode: str = "offline"

    @property
    def alert_run_id(self) -> str:
        """The id of the run that carries this job's alerts."""
        return f"{self.run_id}{ALERT_RUN_SUFFIX}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (the wire form for the wandb worker)."""
        return {
            "project": self.project,
            "entity": self.entity,
            "group": self.group,
            "run_id": self.run_id,
            "dir": self.dir,
            "mode": self.mode,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WandbTarget:
        """The inverse of ``to_dict``."""
        return cls(
            project=str(data["project"]),
            entity=data.get("entity"),
            group=data.get("group"),
            run_id=str(data["run_id"]),
            dir=str(data["dir"]),
            mode=str(data.get("mode", "offline")),
        )


@dataclass(frozen=True)
class Alert:
    """One alert: built by ``make_alert``, delivered by ``AlertDispatcher``.

    ``details`` keeps the structured facts (JSON values) for ``alerts.jsonl`` and
    the UI; ``text`` is their human form. ``alert_id`` ties the delivery records
    of ``alerts.jsonl`` to the alert.
    """

    job_id: str
    job_name: str
    event: str
    title: str
    text: str
    level: str
    time: float
    wandb: WandbTarget | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    alert_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping (``alerts.jsonl`` and the wandb worker's input)."""
        return {
            "alert_id": self.alert_id,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "event": self.event,
            "title": self.title,
            "text": self.text,
            "level": self.level,
            "time": self.time,
            "wandb": self.wandb.to_dict() if self.wandb else None,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Alert:
        """The inverse of ``to_dict``."""
        target = data.get("wandb")
        return cls(
            job_id=str(data["job_id"]),
            job_name=str(data["job_name"]),
            event=str(data["event"]),
            title=str(data["title"]),
            text=str(data["text"]),
            level=str(data["level"]),
            time=float(data["time"]),
            wandb=WandbTarget.from_dict(target) if target else None,
            details=dict(data.get("details") or {}),
            alert_id=str(data.get("alert_id") or uuid.uuid4().hex),
        )


def make_alert(
    event: str,
    *,
    job_id: str,
    job_name: str,
    details: Mapping[str, Any],
    wandb: WandbTarget | None,
    time: float | None = None,
) -> Alert:
    """Build the alert for ``event`` of a job from the facts in ``details``.

    Recognised ``details`` keys (all optional; any other key is appended to the
    text as ``key: value`` so nothing the daemon knows is lost):

    - every event: ``attempt`` (restart/hang: the NEW attempt; else the attempt concerned),
      ``previous_attempt`` (restart/hang: the attempt that ended; default attempt - 1), ``restarts``, ``max_restarts``,
      ``gpus`` / ``gpu``, ``logs`` (path of the attempt's stderr), ``error`` (last
      error line), ``host`` (default: this node's hostname)
    - restart: ``cause`` ("crash", "exit code 1", "hang", "GPU 2 lost"...), ``detail`` (the
      cause's specifics), ``resumed_from`` (checkpoint path; None = from scratch),
      ``resumed_score``, ``resumed_step``, ``delay_s`` (backoff before the relaunch),
      ``message`` (the restart policy's decision), ``previous_resumed_from``
    - hang: ``silent_s`` (seconds without progress), ``hang_timeout_s``, ``last_step``,
      ``stacks`` (path of the stack dump), ``action``
    - gpu_fault: ``gpu``, ``fault`` ("Xid 79: fell off the bus"), ``quarantined`` (bool), ``action``
    - failed: ``reason`` ("max_restarts (10 in 1h) reached", "no progress in 3 attempts"...);
      falls back to ``message`` then ``end_reason``
    - budget / completed / stopped / failed: ``best_checkpoint``, ``best_score``, ``monitor``,
      ``elapsed_s``, ``budget_s``, ``by`` (who stopped it), ``message`` / ``end_reason``
    - reboot: ``boot_id``, ``previous_boot_id``, ``downtime_s``, ``action``, ``resumed_from``,
      ``jobs`` (every job recovered)

    The core's own keys are understood too: ``delay`` (= ``delay_s``), and for the
    ending events ``score`` / ``step`` (= ``best_score`` / ``best_step``).

    Raises ``ValueError`` for an unknown event.
    """
    if event not in _EVENT_TITLES:
        raise ValueError(f"unknown alert event {event!r}; expected one of {', '.join(ALERT_EVENTS)}")
    words, level = _EVENT_TITLES[event]
    facts = _normalise(event, details)
    facts.setdefault("host", socket.gethostname())
    text = _TEXT_BUILDERS[event](job_name, job_id, facts)
    return Alert(
        job_id=job_id,
        job_name=job_name,
        event=event,
        title=f"{job_name}: {words}",
        text=text,
        level=level,
        time=_time.time() if time is None else time,
        wandb=wandb,
        details=_jsonable(facts),
    )


def alert_for_job(
    event: str,
    *,
    job_id: str,
    job_name: str,
    job_dir: str | Path,
    cfg: Any | None,
    details: Mapping[str, Any],
    time: float | None = None,
) -> Alert | None:
    """The alert for ``event`` of a job, or None when its ``supervision.alerts`` leaves the event out.

    The one call the daemon needs: checks the job's alert list, finds its W&B
    target (None when W&B is disabled) and builds the alert. ``cfg`` is the
    job's frozen config; None (unreadable) means the default events and no W&B.
    """
    events = enabled_alert_events(cfg) if cfg is not None else frozenset(DEFAULT_ALERTS)
    if event not in events:
        return None
    target = wandb_target_from_config(cfg, job_id=job_id, job_dir=job_dir) if cfg is not None else None
    return make_alert(event, job_id=job_id, job_name=job_name, details=details, wandb=target, time=time)


def wandb_target_from_config(cfg: Any, *, job_id: str, job_dir: str | Path) -> WandbTarget | None:
    """The W&B target of a job from its resolved config (``logger.wandb``), or None when disabled.

    ``cfg`` is the frozen job config (a ``DictConfig`` or a plain mapping). The
    run id falls back to the job id and the group to the job name, the way the
    supervisor freezes them; ``dir`` falls back to ``<job_dir>/wandb``.
    """
    section = cfg["logger"]["wandb"]
    mode = str(section.get("mode") or "online")
    if mode == "disabled":
        return None
    name = str(cfg.get("name") or job_id)
    default_dir = Path(job_dir) / "wandb"
    return WandbTarget(
        project=str(section.get("project") or "ml-supervisor"),
        entity=section.get("entity") or None,
        group=str(section.get("group") or name),
        run_id=str(section.get("run_id") or job_id),
        dir=str(section.get("dir") or default_dir),
        mode=mode,
    )


def enabled_alert_events(cfg: Any) -> frozenset[str]:
    """The events that alert for a job (``supervision.alerts`` of its config)."""
    return frozenset(str(e) for e in cfg["supervision"]["alerts"])


# --------------------------------------------------------------------------- text builders
#
# Each builder writes: one sentence saying what happened and what the supervisor did,
# then "key: value" lines with the facts, then where to look. Keys a builder used are
# popped so the generic tail only shows the rest.


def _restart_text(job: str, job_id: str, f: dict[str, Any]) -> str:
    attempt, previous = _attempts(f)
    who = f"Attempt {previous}" if previous is not None else "The trainer"
    relaunch = f"relaunched as attempt {attempt}." if attempt is not None else "relaunched."
    head = f"{who} ended ({_cause(f)}); {relaunch}"
    lines = [head]
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
    lines = [f"{head}; {action}."]
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


_ENDING_EVENTS = frozenset({"failed", "budget", "completed", "stopped"})

_TEXT_BUILDERS = {
    "restart": _restart_text,
    "hang": _hang_text,
    "gpu_fault": _gpu_fault_text,
    "failed": _failed_text,
    "budget": _budget_text,
    "completed": _completed_text,
    "stopped": _stopped_text,
    "reboot": _reboot_text,
}


def _normalise(event: str, details: Mapping[str, Any]) -> dict[str, Any]:
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


def _jsonable(facts: Mapping[str, Any]) -> dict[str, Any]:
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
