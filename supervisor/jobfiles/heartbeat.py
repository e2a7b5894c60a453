"""The heartbeat: ``attempts/<n>/heartbeat.json``, the trainer's progress report.

Rewritten atomically at most every few seconds while steps complete, and at
once on a phase change, so the daemon can tell a slow step from a hang:

    {"pid": 4242, "attempt": 2, "time": 1.7e9, "started_at": 1.7e9, "phase": "train",
     "step": 120, "epoch": 3, "step_time": 0.021, "max_step_time": 0.05,
     "metrics": {"train_loss": 0.31}}

``phase`` is one of ``setup`` (before the first step), ``train``,
``validate``, ``checkpoint`` (a save is in progress) and ``done``.
``step_time`` is the mean of recent step intervals, ``max_step_time`` the
slowest of them (seconds). ``marks`` are wall-clock times of the attempt's
start-up milestones, each set once: ``imports_done`` (torch and Lightning
imported), ``checkpoint_loaded`` (the resume checkpoint
restored), ``train_start`` (fit loop starting, after the sanity check) and
``first_step`` (the first optimizer step of this attempt ended).
``compute_time`` is the median of recent steps' compute (batch start to loss ready: the
forward, before backward's gradient all-reduce waits for the other ranks), and
``compute_best`` the lowest such median this process has seen over a full window;
the daemon compares ranks with them (``rules/stragglers.py``).
``rank`` is the writer's global rank (ranks >= 1 write ``heartbeat.rank<N>.json``);
a beat without it is rank 0's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import finite_or_none, read_json, write_json_atomic
from supervisor.jobfiles.bounds import MAX_PID, bounded_int, clamped_count, optional_duration, unix_time

PHASES = ("setup", "train", "validate", "checkpoint", "done")


@dataclass
class Heartbeat:
    pid: int
    attempt: int
    time: float
    started_at: float
    phase: str = "setup"
    step: int = 0
    epoch: int = 0
    step_time: float | None = None
    max_step_time: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)
    rank: int = 0
    compute_time: float | None = None
    compute_best: float | None = None


def write_heartbeat(path: str | Path, beat: Heartbeat) -> None:
    """Replace the heartbeat file (not fsynced: a lost beat costs nothing).

    Non-finite metric values are left out (JSON has no NaN; a NaN loss must not
    crash the trainer's heartbeat); the manifest's ``finite`` flag records them.
    """
    data = asdict(beat)
    data["metrics"] = {k: v for k, v in data["metrics"].items() if finite_or_none(v) is not None}
    write_json_atomic(path, data, durable=False)


def read_heartbeat(path: str | Path) -> Heartbeat | None:
    """The last heartbeat, or ``None`` when there is none (yet) or it is unreadable."""
    data: Any = read_json(path)
    if not isinstance(data, dict):
        return None
    try:
        # Every number checked: a trainer's file may hold Infinity or 1e400 (see bounds.py).
        time = unix_time(data["time"])
        return Heartbeat(
            pid=bounded_int(data["pid"], high=MAX_PID),
            attempt=bounded_int(data["attempt"]),
            time=time,
            started_at=unix_time(data.get("started_at", time)),
            phase=str(data.get("phase", "train")),
            step=clamped_count(data.get("step", 0)),
            epoch=clamped_count(data.get("epoch", 0)),
            step_time=optional_duration(data.get("step_time")),
            max_step_time=optional_duration(data.get("max_step_time")),
            metrics=_metrics(data.get("metrics")),
            marks=_metrics(data.get("marks")),
            rank=int(data.get("rank", 0)),
            compute_time=optional_duration(data.get("compute_time")),
            compute_best=optional_duration(data.get("compute_best")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _metrics(raw: Any) -> dict[str, float]:
    """The finite numbers of ``raw``; one odd value must not cost the whole beat."""
    if not isinstance(raw, dict):
        return {}
    numbers = {str(k): finite_or_none(v) for k, v in raw.items()}
    return {k: v for k, v in numbers.items() if v is not None}
