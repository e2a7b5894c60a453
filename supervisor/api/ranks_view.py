"""``status``'s ``ranks``: each rank's compute time a step and its scores, from the ranks' heartbeats."""

from __future__ import annotations

from typing import Any

from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import AttemptLayout
from supervisor.rules.stragglers import rank_scores
from supervisor.store import AttemptRow


def ranks_view(layout: AttemptLayout, attempt: AttemptRow | None, world_size: int) -> list[dict[str, Any]] | None:
    """``[{rank, gpu, step_ms, relative, individual}]`` of a multi-rank attempt (None for one rank)."""
    if attempt is None or world_size <= 1:
        return None
    beats = {r: read_heartbeat(layout.heartbeat_of(r)) for r in range(world_size)}
    times = {r: b.compute_time for r, b in beats.items() if b is not None and b.compute_time}
    scores = rank_scores(times, {r: b.compute_best for r, b in beats.items() if b is not None})
    out = []
    for rank in range(world_size):
        score = scores.get(rank)
        out.append({"rank": rank, "gpu": attempt.gpus[rank] if rank < len(attempt.gpus) else None,
                    "step_ms": round(score.compute_s * 1000, 2) if score else None,
                    "relative": round(score.relative, 3) if score else None,
                    "individual": round(score.individual, 3) if score else None})
    return out
