"""What the core tells the alerts about, one dataclass per alert event.

The core builds one of these; the daemon turns it into an ``Alert`` with
``model.alert_for_job(alert.event, ..., details=alert.details())``. The field
names are the keys the texts (``texts.py``) read, so nothing is renamed on the
way and nothing is sent twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class AlertEvent:
    """Base: ``event`` names the alert event (a key of ``supervision.alerts``)."""

    event: ClassVar[str]

    def details(self) -> dict[str, Any]:
        """The facts as the texts read them (fields left None are not told)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


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
