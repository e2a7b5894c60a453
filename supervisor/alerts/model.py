"""What an alert is, and how each supervision event becomes one a person can act on at 3 a.m.

``make_alert`` is the one place that turns an event and its details into a title,
a text and a level. Titles are STABLE per job and event (no attempt number, no
cause): W&B's ``wait_duration`` and the webhook throttle both key on the title,
which is what stops a crash loop from flooding anyone. The changing facts go in
the text.

Nothing here imports wandb: the daemon builds alerts, a worker subprocess sends them.
"""

from __future__ import annotations

import socket
import time as _time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supervisor.alerts.texts import TEXT_BUILDERS, jsonable, normalise
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
    "straggler": ("straggler", "WARN"),
    "resize": ("resized (elastic DDP)", "WARN"),
}
assert set(_EVENT_TITLES) == set(ALERT_EVENTS), "every configurable alert event needs a title"


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
    alert_id: str | None = None,
) -> Alert:
    """Build the alert for ``event`` of a job from the facts in ``details``.

    The core sends exactly the fields of its event's dataclass (``alerts/events.py``:
    ``RestartAlert``, ``HangAlert``, ``GpuFaultAlert``, the four ``JobEndedAlert``s,
    ``RebootAlert``). Any other key is appended to the text as ``key: value``, so nothing
    is lost; the texts also read a few keys no core event carries, for alerts made by
    hand: ``host`` (default: this node's hostname), ``error`` (a last error line),
    ``previous_attempt``, ``silent_s`` / ``hang_timeout_s`` / ``action`` (hang),
    ``by`` (stopped), ``downtime_s`` (reboot); and the older names ``delay``, ``score``
    and ``step`` (for ``delay_s``, ``best_score``, ``best_step``).

    ``alert_id`` gives the alert a durable identity (default: a fresh random one).

    Raises ``ValueError`` for an unknown event.
    """
    if event not in _EVENT_TITLES:
        raise ValueError(f"unknown alert event {event!r}; expected one of {', '.join(ALERT_EVENTS)}")
    words, level = _EVENT_TITLES[event]
    facts = normalise(event, details)
    if facts.get("cause") == "diverged" or facts.get("end_reason") == "diverged":
        words = "loss diverged, rolled back" if event == "restart" else "loss kept diverging, gave up"
    facts.setdefault("host", socket.gethostname())
    # The text builders consume the facts they word (pop); details must keep them all
    # (alerts.jsonl had lost the new attempt's number, found by the chaos soak).
    text = TEXT_BUILDERS[event](job_name, job_id, dict(facts))
    return Alert(
        job_id=job_id,
        job_name=job_name,
        event=event,
        title=f"{job_name}: {words}",
        text=text,
        level=level,
        time=_time.time() if time is None else time,
        wandb=wandb,
        details=jsonable(facts),
        alert_id=alert_id or uuid.uuid4().hex,
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
    alert_id: str | None = None,
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
    return make_alert(event, job_id=job_id, job_name=job_name, details=details, wandb=target, time=time,
                      alert_id=alert_id)


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
