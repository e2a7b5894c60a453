"""What ``status --json`` and the web page show: plain dicts built from the store and the job files.

The field names are a contract scripts rely on (see the README); add fields,
never rename them.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf

from supervisor.api.divergence_view import divergence_view
from supervisor.api.progress_view import progress_view
from supervisor.api.ranks_view import ranks_view
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import CheckpointEntry, live_checkpoints, rank_best
from supervisor.jobfiles.safe_read import list_dir
from supervisor.rules.cadence import AUTO_DEFAULT_STEPS
from supervisor.rules.causes import EventKind
from supervisor.runners.registry import BACKENDS, job_world_size
from supervisor.runners.standby_process import standby_view
from supervisor.runners.zygotes import zygote_view
from supervisor.store import AttemptRow, JobRow, Store

T = TypeVar("T")


def job_status(store: Store, job: JobRow, now: float) -> dict[str, Any]:
    """The full status object of one job."""
    layout = JobLayout(Path(job.job_dir))
    attempts = store.attempts(job.id)
    latest = attempts[-1] if attempts else None
    # The latest attempt's last heartbeat, live or not: after the end it still tells the epoch and metrics.
    beat = _or_none(lambda: read_heartbeat(layout.attempt(latest.n).heartbeat)) if latest else None
    steps = [a.global_step for a in attempts if a.global_step is not None]
    global_step = beat.step if beat else (steps[-1] if steps else 0)
    if latest is not None and latest.ended_at is not None and latest.global_step is not None:
        # Once the attempt ended, its exit record's step is the final one; the heartbeat is
        # throttled (at most every 2 s) and may be some steps behind it (found by the chaos soak).
        global_step = latest.global_step
    ranked = rank_best(_or_none(lambda: live_checkpoints(layout.manifest)) or [])
    started = job.first_started_at
    if started is None:
        used = 0.0
    else:
        used = max(0.0, (job.ended_at if job.ended_at is not None else now) - started)
    frozen = _frozen_config(layout)
    wandb = _wandb_view(frozen, job)
    progress = progress_view(layout, job, attempts, frozen, global_step, now)
    # a resumed attempt's setup beat says step 0: it stands at least at its resume step (progress knows it)
    global_step = max(global_step, int(progress.get("step") or 0))
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
        # ranks the latest attempt runs (DDP: one process per device; per-rank files in the attempt dir;
        # elastic DDP: fewer while GPUs are lost)
        "world_size": latest.world_size if latest is not None and latest.world_size else _world_size(frozen),
        "attempts": [attempt_view(a) for a in attempts],
        "checkpoints": [checkpoint_view(e) for e in ranked],
        "best_checkpoint": checkpoint_view(ranked[0]) if ranked else _stored_best(job),
        "budget": {
            "seconds": job.budget_s,
            "used": round(used, 3),
            "remaining": None if job.budget_s is None else round(max(0.0, job.budget_s - used), 3),
        },
        "wandb": wandb,
        "checkpointing": _checkpointing_view(frozen, store.last_event_data(job.id, EventKind.LAUNCH)),
        "divergence": divergence_view(layout, attempts, _world_size(frozen)),
        "progress": progress,
        "ranks": ranks_view(layout.attempt(latest.n), latest, latest.world_size or _world_size(frozen))
        if latest else None,
        "standby": _or_none(lambda: standby_view(Path(job.job_dir))),
        "zygote": _or_none(lambda: zygote_view(Path(job.job_dir))),
    }


def _or_none(read: Callable[[], T]) -> T | None:
    """What ``read`` returns, or None when the job's files do not answer in time (``FileStalled``) or the
    daemon is out of descriptors: ``status`` answers without them rather than wait or fail."""
    try:
        return read()
    except OSError:
        return None


def attempt_view(a: AttemptRow) -> dict[str, Any]:
    view = {
        "n": a.n, "pid": a.pid, "gpus": a.gpus, "started_at": a.started_at, "ended_at": a.ended_at,
        "exit_code": a.exit_code, "signal": a.signal, "reason": a.reason, "detail": a.detail,
        "resumed_from": a.resumed_from, "new_checkpoints": a.new_checkpoints, "global_step": a.global_step,
        "world_size": a.world_size, "accumulate_grad_batches": a.accumulate_grad_batches,
    }
    backend = BACKENDS.get(a.runner_kind)
    if backend is not None:  # where the attempt ran, as its backend tells it (e.g. a Slurm job and its nodes)
        view.update(backend.describe(a.runner_state))
    return view


def checkpoint_view(e: CheckpointEntry) -> dict[str, Any]:
    return {"path": e.path, "step": e.step, "score": e.score, "epoch": e.epoch, "monitor": e.monitor, "kind": e.kind}


def _stored_best(job: JobRow) -> dict[str, Any] | None:
    return {"path": job.best_checkpoint, "step": None, "score": None} if job.best_checkpoint else None


def _world_size(cfg: Any | None) -> int:
    try:
        return job_world_size(cfg) if cfg is not None else 1
    except Exception:  # a frozen config of an older version without a trainer section
        return 1


def _frozen_config(layout: JobLayout) -> Any | None:
    """The job's frozen ``config.yaml``, or None for a job dir from an older version (or unreadable)."""
    try:
        return OmegaConf.load(layout.config)
    except Exception:
        return None


def _checkpointing_view(cfg: Any | None, launch: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the job's checkpoints are (for labels like ``top-3, last``): monitor, mode, save_top_k, save_last; the
    step interval in force, and with ``every_n_train_steps: auto`` why (``cadence``: save cost, MTBF, step time)."""
    if cfg is None:
        return None
    try:
        ckpt = cfg.checkpoint
        view = {"monitor": ckpt.monitor, "mode": ckpt.mode, "save_top_k": ckpt.save_top_k, "save_last": ckpt.save_last,
                "every_n_train_steps": ckpt.every_n_train_steps}
    except Exception:  # an older job dir: the page falls back to plain "top-k"
        return None
    if view["every_n_train_steps"] == "auto":
        cadence = (launch or {}).get("cadence")
        view["cadence"] = cadence if isinstance(cadence, dict) else None
        # before the first measurement the trainer's default is in force
        view["every_n_train_steps"] = (cadence.get("every_n_train_steps") if isinstance(cadence, dict)
                                       else AUTO_DEFAULT_STEPS)
    return view


def _wandb_view(cfg: Any | None, job: JobRow) -> dict[str, Any]:
    """The job's W&B run: its id, the link when online, else the command that uploads the offline runs."""
    try:
        if cfg is None:
            raise LookupError("no frozen config")
        wcfg = cfg.logger.wandb
    except Exception:  # a job dir from an older version: show what the store knows
        return {"run_id": job.wandb_run_id, "url": None, "dir": None, "mode": None}
    url = alerts_url = None
    if wcfg.mode == "online" and wcfg.entity:
        url = f"https://wandb.ai/{wcfg.entity}/{wcfg.project}/runs/{wcfg.run_id}"
        alerts_url = f"{url}-supervisor"  # the alert worker's companion run (alerts/wandb_worker.py)
    return {"run_id": wcfg.run_id, "url": url, "alerts_url": alerts_url, "dir": wcfg.dir, "mode": wcfg.mode,
            "project": wcfg.project, "sync_command": _sync_command(wcfg.dir, wcfg.mode)}


def _sync_command(wandb_dir: str | None, mode: str | None) -> str | None:
    """``wandb sync DIR/wandb/offline-run-*``: uploads every offline run of the job (the trainer's run of
    each attempt and the ``-supervisor`` alert run). Also shown for an online job that fell back to offline."""
    if not wandb_dir or mode == "disabled":
        return None
    runs = Path(wandb_dir) / "wandb"
    if mode != "offline":
        names = _or_none(lambda: list_dir(runs)) or []  # the job owner's directory: never a wait, never whole
        if not any(name.startswith("offline-run-") for name in names):
            return None
    return f"wandb sync {shlex.quote(str(runs))}/offline-run-*"
