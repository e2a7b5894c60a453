"""The sweep's summary from its trial records: what ``sweep status`` shows (pure, no Optuna)."""

from __future__ import annotations

from typing import Any

from supervisor.sweep.files import TrialRecord
from supervisor.sweep.spec import SweepSpec


def trial_view(trial: TrialRecord) -> dict[str, Any]:
    """One trial; ``state`` is refined by the daemon with its job's live state."""
    if trial.outcome == "pruned":
        state = "pruned"
    elif trial.job_id is None:
        state = "failed" if trial.outcome else "starting"
    else:
        state = {"complete": "completed", "fail": "failed"}.get(trial.outcome or "", "running")
    return {"n": trial.n, "job_id": trial.job_id, "params": trial.params, "state": state, "value": trial.value,
            "outcome": trial.outcome, "detail": trial.detail}


def best_trial(spec: SweepSpec, trials: list[TrialRecord]) -> dict[str, Any] | None:
    done = [t for t in trials if t.outcome == "complete" and t.value is not None]
    if not done:
        return None
    pick = min if spec.goal == "minimize" else max
    best = pick(done, key=lambda t: float(t.value))  # type: ignore[arg-type]
    return {"n": best.n, "job_id": best.job_id, "params": best.params, "value": best.value}


def build_summary(spec: SweepSpec, trials: list[TrialRecord]) -> dict[str, Any]:
    shown = [t for t in trials if not t.abandoned]
    return {"trials": [trial_view(t) for t in shown], "best": best_trial(spec, trials),
            "counted": sum(1 for t in trials if t.counted)}
