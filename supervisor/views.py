"""What ``status --json`` and the web page show: plain dicts built from the store and the job files.

The field names are a contract scripts rely on (see the README); add fields,
never rename them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best
from supervisor.store import AttemptRow, JobRow, Store


def job_status(store: Store, job: JobRow, now: float) -> dict[str, Any]:
    """The full status object of one job."""
    layout = JobLayout(Path(job.job_dir))
    attempts = store.attempts(job.id)
    latest = attempts[-1] if attempts else None
    # The latest attempt's last heartbeat, live or not: after the end it still tells the epoch and metrics.
    beat = read_heartbeat(layout.attempt(latest.n).heartbeat) if latest else None
    steps = [a.global_step for a in attempts if a.global_step is not None]
    global_step = beat.step if beat else (steps[-1] if steps else 0)
    ranked = rank_best(live_checkpoints(layout.manifest))
    started = job.first_started_at
    if started is None:
        used = 0.0
    else:
        used = max(0.0, (job.ended_at if job.ended_at is not None else now) - started)
    wandb = _wandb_view(layout, job)
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state.value,
        "end_reason": job.end_reason,
        "restarts": job.restarts,
        "global_step": global_step,
        "epoch": beat.epoch if beat else None,
        "phase": beat.phase if beat else None,
        "metrics": beat.metrics if beat else {},
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
        "attempts": [attempt_view(a) for a in attempts],
        "checkpoints": [checkpoint_view(e) for e in ranked],
        "best_checkpoint": checkpoint_view(ranked[0]) if ranked else _stored_best(job),
        "budget": {
            "seconds": job.budget_s,
            "used": round(used, 3),
            "remaining": None if job.budget_s is None else round(max(0.0, job.budget_s - used), 3),
        },
        "wandb": wandb,
    }


def attempt_view(a: AttemptRow) -> dict[str, Any]:
    return {
        "n": a.n, "pid": a.pid, "gpus": a.gpus, "started_at": a.started_at, "ended_at": a.ended_at,
        "exit_code": a.exit_code, "signal": a.signal, "reason": a.reason, "detail": a.detail,
        "resumed_from": a.resumed_from, "new_checkpoints": a.new_checkpoints, "global_step": a.global_step,
    }


def checkpoint_view(e: CheckpointEntry) -> dict[str, Any]:
    return {"path": e.path, "step": e.step, "score": e.score, "epoch": e.epoch, "monitor": e.monitor, "kind": e.kind}


def _stored_best(job: JobRow) -> dict[str, Any] | None:
    return {"path": job.best_checkpoint, "step": None, "score": None} if job.best_checkpoint else None


def _wandb_view(layout: JobLayout, job: JobRow) -> dict[str, Any]:
    try:
        cfg = OmegaConf.load(layout.config).logger.wandb
    except Exception:  # a job dir from an older version: show what the store knows
        return {"run_id": job.wandb_run_id, "url": None, "dir": None, "mode": None}
    url = None
    if cfg.mode == "online" and cfg.entity:
        url = f"https://wandb.ai/{cfg.entity}/{cfg.project}/runs/{cfg.run_id}"
    return {"run_id": cfg.run_id, "url": url, "dir": cfg.dir, "mode": cfg.mode, "project": cfg.project}
