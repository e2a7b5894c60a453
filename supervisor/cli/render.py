"""Terminal rendering with rich: the job table, one job's detail, attempts, events."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from supervisor.config import format_duration


def make_console() -> Console:
    """A rich console; wide when output goes to a file or a pipe (logs, CI), where rich would assume 80."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


STATE_STYLE = {"running": "green", "starting": "cyan", "queued": "blue", "backoff": "yellow", "stopping": "yellow",
               "completed": "bold green", "failed": "bold red", "stopped": "magenta"}


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


BAR_CELLS = 10
PARTIAL = " ▏▎▍▌▋▊▉"  # a cell's eighths


def progress_bar(percent: float | None, cells: int = BAR_CELLS) -> str:
    """``███████▍░░``: ``percent`` of ``cells``, in eighths of a cell (full only at 100%)."""
    if percent is None:
        return "░" * cells
    eighths = min(cells * 8, max(0, int(cells * 8 * percent / 100.0 + 1e-9)))
    full, part = divmod(eighths, 8)
    bar = "█" * full + (PARTIAL[part] if part else "")
    return bar + "░" * (cells - len(bar))


def rate_text(steps_per_s: float | None) -> str:
    """``41 it/s``, ``2.5 it/s``, or ``3.2 s/it`` below one step a second (as tqdm writes them)."""
    if not steps_per_s:
        return "- it/s"
    if steps_per_s >= 10:
        return f"{steps_per_s:.0f} it/s"
    if steps_per_s >= 1:
        return f"{steps_per_s:.1f} it/s"
    return f"{1.0 / steps_per_s:.1f} s/it"


def progress_text(progress: dict[str, Any] | None, *, bar: bool = True) -> str:
    """``███████░░░ 68%  41 it/s  ETA 2h13m`` (``budget first`` when the budget ends before the target; a job
    bounded only by its budget shows the share of the budget used). ``bar=False``: without the bar."""
    if not progress:
        return "-"
    percent = progress.get("percent")
    parts = []
    if percent is not None:
        share = f"{percent:.0f}%" + (" of budget" if progress.get("target_from") == "budget" else "")
        parts.append(f"{progress_bar(percent)} {share}" if bar else share)
    elif bar:
        parts.append(progress_bar(None) + " ?")
    parts.append(rate_text(progress.get("steps_per_s")))
    eta = progress.get("eta_s")
    if eta is not None:
        late = progress.get("ends_by") == "budget" and progress.get("target_from") != "budget"
        parts.append(f"ETA {format_duration(eta)}" + (" (budget first)" if late else ""))
    return "  ".join(parts)


def lost_text(progress: dict[str, Any] | None) -> str:
    """``3m12s (4.2%)``: the time lost to faults and its share of the run so far; ``-`` when none."""
    if not progress or not progress.get("lost_s"):
        return "-"
    share = progress.get("lost_share")
    return format_duration(progress["lost_s"]) + ("" if share is None else f" ({100 * share:.1f}%)")


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("JOB", "STATE", "REASON", "RESTARTS", "STEP", "PROGRESS", "BEST", "BUDGET LEFT"):
        table.add_column(col, no_wrap=col == "PROGRESS")
    for job in jobs:
        best = job.get("best_checkpoint") or {}
        score = best.get("score")
        budget = job["budget"]
        left = "-" if budget["remaining"] is None else format_duration(budget["remaining"])
        state = job["state"]
        table.add_row(job["id"], f"[{STATE_STYLE.get(state, '')}]{state}[/]", job.get("end_reason") or "",
                      str(job["restarts"]), str(job["global_step"]), progress_text(job.get("progress")),
                      "-" if score is None else f"{score:.4g} @ {best.get('step')}", left)
    return table


def attempts_table(attempts: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("#", "STARTED", "ENDED", "PID", "GPUS", "EXIT", "CAUSE", "DETAIL", "RESUMED FROM"):
        table.add_column(col, overflow="fold")
    for a in attempts:
        exit_text = a["signal"] or ("" if a["exit_code"] is None else str(a["exit_code"]))
        where = str(a["pid"] or "-")
        gpus = ",".join(map(str, a["gpus"])) or "-"
        if a.get("where"):  # the backend says where it ran (a Slurm job and its nodes) instead of a pid and GPUs
            where, gpus = a["where"], a.get("placement") or "-"
        table.add_row(str(a["n"]), when(a["started_at"]), when(a["ended_at"]), where, gpus, exit_text,
                      a["reason"] or "", a.get("detail") or "",
                      Path(a["resumed_from"]).name if a["resumed_from"] else "scratch")
    return table


def job_detail(console: Console, job: dict[str, Any]) -> None:
    state = job["state"]
    console.print(f"[bold]{job['id']}[/]  [{STATE_STYLE.get(state, '')}]{state}[/]"
                  + (f" ({job['end_reason']})" if job.get("end_reason") else ""))
    if job.get("wait_reason"):
        console.print(f"  waiting: {job['wait_reason']}")
    if job.get("detail"):
        console.print(f"  last: {job['detail']}")
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted((job.get("metrics") or {}).items()))
    epoch = job.get("epoch")
    console.print(f"  step {job['global_step']}  epoch {'-' if epoch is None else epoch}"
                  f"  phase {job.get('phase') or '-'}  restarts {job['restarts']}"
                  + (f"  {metrics}" if metrics else ""))
    progress = job.get("progress")
    if progress:
        target = progress.get("target_step")
        console.print(f"  progress {progress_text(progress)}"
                      + ("" if target is None else f"  (target step {target}, {progress.get('target_from')})"))
        if progress.get("lost_s"):
            console.print(f"  lost to faults {lost_text(progress)}: downtime {format_duration(progress['downtime_s'])},"
                          f" {progress.get('recomputed_steps', 0)} steps redone")
    budget = job["budget"]
    if budget["seconds"] is not None:
        console.print(f"  budget {format_duration(budget['seconds'])}: used {format_duration(budget['used'])},"
                      f" left {format_duration(budget['remaining'])}")
    best = job.get("best_checkpoint")
    if best:
        console.print(f"  best checkpoint: {best['path']} (step {best.get('step')}, score {best.get('score')})")
    wandb = job.get("wandb") or {}
    if wandb.get("run_id"):
        console.print(f"  W&B run {wandb['run_id']} ({wandb.get('mode')})"
                      + (f" {wandb['url']}" if wandb.get("url") else f" in {wandb.get('dir')}"))
    if job["attempts"]:
        console.print(attempts_table(job["attempts"]))


def event_line(event: dict[str, Any]) -> str:
    job = f"{event['job_id']} " if event.get("job_id") else ""
    attempt = f"#{event['attempt']} " if event.get("attempt") else ""
    return f"{when(event['time'])} {job}{attempt}{event['kind']}: {event['message']}"


HEALTH_STYLE = {"healthy": "green", "degraded": "yellow", "failed": "bold red", "quarantined": "bold magenta"}


def gpus_table(gpus: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("GPU", "NAME", "HEALTH", "TEMP", "MEMORY", "JOBS", "REASONS"):
        table.add_column(col, overflow="fold")
    for g in gpus:
        health = g["health"]
        temp = "-" if g.get("temperature_c") is None else f"{g['temperature_c']:.0f}C"
        used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
        memory = "-" if used is None or total is None else f"{used}/{total} MiB"
        table.add_row(str(g["index"]), g.get("name") or "-", f"[{HEALTH_STYLE.get(health, '')}]{health}[/]", temp,
                      memory, ",".join(g.get("jobs") or []) or "-", "; ".join(g.get("reasons") or []))
    return table
