"""A trial's metric, read from its job's files (no Optuna, no torch): per validation, and its final value.

One iteration (for hyperband) is one validation: a line of an attempt's ``metrics.jsonl``
where the metric first appears or changes. A resumed attempt rewinds the run to its
checkpoint's step, so points are keyed by global step and a later attempt's point
replaces an earlier attempt's point at the same or a later step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supervisor.jobfiles.atomic import finite_or_none, read_json_lines
from supervisor.jobfiles.layout import JobLayout


def validation_values(job_dir: str | Path, metric: str) -> list[float]:
    """The metric after each validation of the job's current timeline, in order."""
    layout = JobLayout(Path(job_dir))
    points: dict[int, float] = {}
    attempts = sorted((int(p.name) for p in layout.attempts.iterdir() if p.name.isdigit()),
                      key=int) if layout.attempts.is_dir() else []
    for n in attempts:
        seen: list[tuple[int, float]] = []
        last: float | None = None
        for line in read_json_lines(layout.attempt(n).metrics):
            metrics = line.get("metrics") if isinstance(line, dict) else None
            if not isinstance(metrics, dict):
                continue  # valid JSON, but not a line the trainer writes: a trainer's file is untrusted
            value = finite_or_none(metrics.get(metric))
            if value is None or value == last:
                continue
            last = value
            try:
                step = int(line.get("step", 0))
            except (TypeError, ValueError, OverflowError):
                continue
            seen.append((step, value))
        if seen:
            first_step = seen[0][0]
            # this attempt's timeline replaces what an earlier attempt logged from its resume point on
            points = {s: v for s, v in points.items() if s < first_step}
            points.update(dict(seen))
    return [points[s] for s in sorted(points)]


def trial_value(status: dict[str, Any], job_config: Any, metric: str, goal: str) -> float | None:
    """The trial's value: the best checkpoint's score when checkpoint.monitor is the metric.

    Otherwise the best (per ``goal``) value the trial logged; None when it never logged the metric.
    """
    ckpt = getattr(job_config, "checkpoint", None)
    best = status.get("best_checkpoint") or {}
    if ckpt is not None and ckpt.get("monitor") == metric and finite_or_none(best.get("score")) is not None:
        return float(best["score"])
    values = validation_values(status["job_dir"], metric)
    if not values:
        return None
    return min(values) if goal == "minimize" else max(values)
