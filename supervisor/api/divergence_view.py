"""``status``'s ``divergence``: how often a job's loss diverged, where, and what each rollback changed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from supervisor.core.rank_files import diverged_at
from supervisor.jobfiles.atomic import read_json
from supervisor.jobfiles.layout import ROLLBACK_FILE, JobLayout
from supervisor.rules.causes import Cause
from supervisor.store import AttemptRow


def divergence_view(layout: JobLayout, attempts: Sequence[AttemptRow], world_size: int) -> dict[str, Any] | None:
    """``{rollbacks, first_bad_steps, rollback_attempts: [{attempt, resumed_step, skipped, lr_scale}]}``, or None
    for a job whose loss never diverged."""
    diverged = [a for a in attempts if a.cause == Cause.DIVERGED]
    if not diverged:
        return None
    after = {a.n + 1 for a in diverged}
    rollbacks = []
    for a in attempts:
        if a.n not in after:
            continue
        done = read_json(layout.attempt(a.n).dir / ROLLBACK_FILE)
        done = done if isinstance(done, dict) else {}
        skipped = done.get("skipped")
        rollbacks.append({"attempt": a.n, "resumed_from": a.resumed_from,
                          "skipped_batches": skipped if isinstance(skipped, list) else [],
                          "lr_scale": done.get("lr_scale", 1.0)})
    return {"rollbacks": len(diverged),
            "first_bad_steps": [diverged_at(layout.attempt(a.n), world_size) for a in diverged],
            "rollback_attempts": rollbacks}
