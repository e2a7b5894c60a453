"""A finished job as ``list`` shows it: its row and attempts, and nothing read from its files.

A finished job's files no longer change, and a store of months holds thousands of them: ``list`` must not open
one file per job. The summary has every key of ``status --json`` (``views.job_status``); what only the files
tell is null (``checkpoints``, ``epoch``, ``progress``, ``ranks``, ...), the best checkpoint comes from the facts
kept with the job when it ended, and ``"summary": true`` says so (``status JOB`` reads the rest).
"""

from __future__ import annotations

from typing import Any

from supervisor.api.views import attempt_view
from supervisor.store import AttemptRow, JobRow


def job_summary(job: JobRow, attempts: list[AttemptRow]) -> dict[str, Any]:
    """The status object of a finished job from the store alone (``summary`` true)."""
    steps = [a.global_step for a in attempts if a.global_step is not None]
    used = 0.0
    if job.first_started_at is not None and job.ended_at is not None:
        used = max(0.0, job.ended_at - job.first_started_at)
    best = None
    if job.best_checkpoint:
        best = {"path": job.best_checkpoint, "step": job.best_step, "score": job.best_score,
                "monitor": job.best_monitor}
    ranks = [int(a.runner_state.get("world_size") or 1) for a in attempts
             if isinstance(a.runner_state.get("world_size"), int)]
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "end_reason": job.end_reason,
        "restarts": job.restarts,
        "global_step": steps[-1] if steps else 0,
        "epoch": None,
        "phase": None,
        "metrics": {},
        "detail": job.detail,
        "wait_reason": job.wait_reason,
        "created_at": job.created_at,
        "first_started_at": job.first_started_at,
        "ended_at": job.ended_at,
        "next_start_at": job.next_start_at,
        "config_source": job.config_source,
        "workdir": job.workdir,
        "job_dir": job.job_dir,
        "gpus_requested": job.gpus_requested,
        "world_size": max(ranks) if ranks else 1,
        "attempts": [attempt_view(a) for a in attempts],
        "checkpoints": None,
        "best_checkpoint": best,
        "budget": {
            "seconds": job.budget_s,
            "used": round(used, 3),
            "remaining": None if job.budget_s is None else round(max(0.0, job.budget_s - used), 3),
        },
        "wandb": {"run_id": job.wandb_run_id, "url": None, "dir": None, "mode": None},
        "checkpointing": None,
        "divergence": None,
        "progress": None,
        "ranks": None,
        "standby": None,
        "zygote": None,
        "pruned_at": job.pruned_at,
        "summary": True,
    }
