"""What the core tells the alerts about, one dataclass per alert event.

The core builds one of these; the daemon turns it into an ``Alert`` with
``model.alert_for_job(alert.event, ..., details=alert.details())``. The field
names are the keys the texts (``texts.py``) read, so nothing is renamed on the
way and nothing is sent twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar


@dataclass(frozen=True)
class AlertEvent:
    """Base: ``event`` names the alert event (a key of ``supervision.alerts``)."""

    event: ClassVar[str]
    # The alert's identity, when it has a durable one (an outbox alert: "<job id>-event-<event id>"):
    # the dispatcher records an id once, so re-sending after a daemon crash makes no second record.
    alert_id: str | None = field(default=None, kw_only=True, compare=False)

    def details(self) -> dict[str, Any]:
        """The facts as the texts read them (fields left None are not told; ``alert_id`` is no fact)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "alert_id" and getattr(self, f.name) is not None}


@dataclass(frozen=True)
class RestartAlert(AlertEvent):
    """An attempt ended and the job is relaunched."""

    event: ClassVar[str] = "restart"
    cause: str
    detail: str  # the cause's specifics: the error line, the signal, ...
    attempt: int  # the NEW attempt
    restarts: int
    max_restarts: int
    delay_s: float  # backoff before the relaunch
    message: str  # the restart policy's decision
    gpus: list[int]
    logs: str  # the ended attempt's stderr
    resumed_from: str | None = None  # the checkpoint the relaunch will take (None: from scratch)
    resumed_step: int | None = None
    resumed_score: float | None = None
    last_step: int | None = None
    diverged_at: int | None = None  # cause diverged: the first bad step (the relaunch rolls back before it)
    where: str | None = None  # where the relaunch went, when its backend says (Slurm: "inside allocation 1234 ...")
    not_started: str | None = None  # the relaunch failed to start (why); it is retried


@dataclass(frozen=True)
class HangAlert(RestartAlert):
    """A hung attempt was stopped and the job is relaunched."""

    event: ClassVar[str] = "hang"
    stacks: str | None = None  # the stack dump, when one was saved


@dataclass(frozen=True)
class GpuFaultAlert(AlertEvent):
    """A GPU of the job's attempt failed; the attempt is being stopped."""

    event: ClassVar[str] = "gpu_fault"
    gpu: int | None
    fault: str
    quarantined: bool
    attempt: int | None


@dataclass(frozen=True)
class JobEndedAlert(AlertEvent):
    """Base of the four endings: the job reached a terminal state."""

    end_reason: str
    message: str
    attempts: int
    restarts: int
    best_checkpoint: str | None = None
    best_score: float | None = None
    best_step: int | None = None
    monitor: str | None = None
    elapsed_s: float | None = None
    budget_s: float | None = None


@dataclass(frozen=True)
class CompletedAlert(JobEndedAlert):
    event: ClassVar[str] = "completed"


@dataclass(frozen=True)
class BudgetAlert(JobEndedAlert):
    event: ClassVar[str] = "budget"


@dataclass(frozen=True)
class FailedAlert(JobEndedAlert):
    event: ClassVar[str] = "failed"


@dataclass(frozen=True)
class StoppedAlert(JobEndedAlert):
    event: ClassVar[str] = "stopped"


@dataclass(frozen=True)
class RebootAlert(AlertEvent):
    """The node rebooted while the job ran; it is relaunched from its best checkpoint."""

    event: ClassVar[str] = "reboot"
    jobs: list[str]  # every job recovered
    previous_boot_id: str | None
    boot_id: str


@dataclass(frozen=True)
class StragglerAlert(AlertEvent):
    """A rank (or a single-process job) runs well below its peers' (or its own) pace; once per rank per attempt."""

    event: ClassVar[str] = "straggler"
    message: str  # the event's line: who, how slow, what NVML says of its GPU
    attempt: int
    rank: int | None = None  # None: a single-process job slowed down
    gpu: int | None = None
    relative: float | None = None
    individual: float | None = None
    action: str = "alert"  # or "restart_without": its GPU quarantined, the job relaunched without it
    gpu_context: dict[str, Any] | None = None


@dataclass(frozen=True)
class ResizeAlert(AlertEvent):
    """Elastic DDP: an attempt runs on fewer GPUs than the one before (GPUs lost) or more (they came back)."""

    event: ClassVar[str] = "resize"
    message: str  # "GPU 1 lost: continuing on 1 of 2 GPUs, accumulating 2 batches"
    attempt: int
    world_size: int
    previous_world_size: int
    configured_world_size: int
    accumulate_grad_batches: int
    lost_gpus: list[int] | None = None


# The events that go through the store's outbox (every restart, every ending, a GPU fault, a reboot), by name.
OUTBOX_EVENTS: dict[str, type[AlertEvent]] = {
    cls.event: cls for cls in (RestartAlert, HangAlert, CompletedAlert, BudgetAlert, FailedAlert, StoppedAlert,
                               GpuFaultAlert, RebootAlert, StragglerAlert, ResizeAlert)
}


def event_from_details(event: str, details: dict[str, Any], *, alert_id: str | None = None) -> AlertEvent:
    """Rebuild an outbox event from its name and ``details()`` (the fields left None come back as None)."""
    cls = OUTBOX_EVENTS[event]
    known = {f.name for f in fields(cls) if f.name != "alert_id"}
    values: dict[str, Any] = {name: details.get(name) for name in known}
    return cls(**values, alert_id=alert_id)
