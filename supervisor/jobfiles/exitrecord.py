"""The exit record: ``attempts/<n>/exit.json``, how an attempt ended as the trainer saw it.

Written (durably) by the trainer just before it exits. Exit codes cannot say
"completed" (Lightning exits 0 after SIGTERM), so this file is the only proof
of completion; a missing file means the process died without a word.

    {"status": "completed", "reason": "max_epochs", "global_step": 400, "epoch": 9, "time": 1.7e9}
    {"status": "signal", "signal": "SIGTERM", "checkpoint": ABS, "global_step": 120, ...}
    {"status": "exception", "exception": {"type": "RuntimeError", "message": "...", "traceback": "..."}, ...}
    {"status": "config_error", "message": "configs/x.yaml: model.class_path: ...", ...}
    {"status": "diverged", "divergence": {"step": 120, "check": "non_finite_loss", "value": "nan", "rank": 0}, ...}

``reason`` (completed only): max_epochs, max_steps, early_stopping, max_time, stopped.
``rank`` is the writer's global rank (0 for a single process; records of
ranks >= 1 are ``exit.rank<N>.json``, see ``layout.py``); a record without it is rank 0's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import read_json, write_json_atomic
from supervisor.jobfiles.bounds import MAX_PID, bounded_int, clamped_count, unix_time

STATUSES = ("completed", "exception", "signal", "config_error", "diverged")


@dataclass
class ExitRecord:
    status: str
    time: float
    pid: int
    global_step: int = 0
    epoch: int = 0
    reason: str | None = None
    signal: str | None = None
    checkpoint: str | None = None
    message: str | None = None
    exception: dict[str, str] | None = None
    rank: int = 0
    divergence: dict[str, Any] | None = None  # status diverged: step, check, value, baseline, rank

    @property
    def diverged_at(self) -> int | None:
        """The first bad step of a diverged attempt (None otherwise, or when the record says no valid one)."""
        if self.status != "diverged" or not isinstance(self.divergence, dict):
            return None
        try:
            return bounded_int(self.divergence.get("step"))
        except (TypeError, ValueError):
            return None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


def write_exit_record(path: str | Path, record: ExitRecord) -> None:
    """Write the record durably: it must survive the process and a power cut."""
    write_json_atomic(path, asdict(record), durable=True)


def read_exit_record(path: str | Path) -> ExitRecord | None:
    """The record, or ``None`` when the trainer left none (or it is unreadable)."""
    data: Any = read_json(path)
    if not isinstance(data, dict) or data.get("status") not in STATUSES:
        return None
    try:
        return ExitRecord(
            status=str(data["status"]),
            time=unix_time(data.get("time", 0.0)),
            pid=bounded_int(data.get("pid", 0), high=MAX_PID),
            global_step=clamped_count(data.get("global_step", 0)),
            epoch=clamped_count(data.get("epoch", 0)),
            reason=data.get("reason"),
            signal=data.get("signal"),
            checkpoint=data.get("checkpoint"),
            message=data.get("message"),
            exception=data.get("exception"),
            rank=int(data.get("rank", 0)),
            divergence=data.get("divergence") if isinstance(data.get("divergence"), dict) else None,
        )
    except (TypeError, ValueError):
        return None
