"""``supervisorctl prune``: remove finished jobs past their retention (docs/retention.md).

    supervisorctl prune [--older-than 30d] [--checkpoints-older-than 7d] [--events-older-than 30d]
                        [--alerts-older-than 7d] [--include-best] [--include-wandb] [--dry-run] [--json]

Never a job that has not finished; its best checkpoint and its W&B offline runs never synced stay unless
asked (those runs are listed with the ``wandb sync`` command that uploads them). ``--dry-run`` lists exactly
what the same prune removes. Each unset age falls back on the daemon's ``retention`` settings (events and
alerts on ``--older-than`` when neither sets them).
"""

from __future__ import annotations

import argparse
import json
import shlex
from typing import Any

from rich.console import Console
from rich.table import Table

from supervisor.api.client import Client
from supervisor.cli.render import when
from supervisor.config import parse_duration
from supervisor.errors import SupervisorError

PRUNE_TIMEOUT_S = 3600.0  # removing many checkpoints on a slow disk takes a while


def add_prune_parser(sub: Any) -> None:
    p = sub.add_parser("prune", help="remove finished jobs past their retention (never a running job)")
    p.add_argument("--older-than", default=None, metavar="AGE",
                   help="jobs that ended more than AGE ago (90d): attempts, logs, events, checkpoints but the "
                        "best (default: the daemon's retention.jobs)")
    p.add_argument("--checkpoints-older-than", default=None, metavar="AGE",
                   help="only the checkpoints other than the best, of jobs that ended more than AGE ago")
    p.add_argument("--events-older-than", default=None, metavar="AGE",
                   help="events of finished jobs and of the daemon (default: retention.events, else --older-than)")
    p.add_argument("--alerts-older-than", default=None, metavar="AGE",
                   help="alerts delivered more than AGE ago (default: retention.alerts, else --older-than)")
    p.add_argument("--include-best", action="store_true", help="the best checkpoint goes too (and the job's row)")
    p.add_argument("--include-wandb", action="store_true",
                   help="W&B offline runs never synced go too (default: kept, and listed for wandb sync)")
    p.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    p.add_argument("--json", action="store_true")


def _age(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(parse_duration(text))
    except ValueError as exc:
        raise SupervisorError(f"{flag}: {exc}") from None


def prune_command(client: Client, console: Console, args: argparse.Namespace) -> int:
    request = {"older_than": _age("--older-than", args.older_than),
               "checkpoints_older_than": _age("--checkpoints-older-than", args.checkpoints_older_than),
               "events_older_than": _age("--events-older-than", args.events_older_than),
               "alerts_older_than": _age("--alerts-older-than", args.alerts_older_than),
               "include_best": args.include_best, "include_wandb": args.include_wandb, "dry_run": args.dry_run}
    client.timeout = max(client.timeout, PRUNE_TIMEOUT_S)
    result = client.call("prune", **{k: v for k, v in request.items() if v is not None and v is not False})
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    render_prune(console, result)
    return 0


def render_prune(console: Console, result: dict[str, Any]) -> None:
    """The jobs a prune touches (or would), what stays of each, the unsynced W&B runs, the totals."""
    dry = result["dry_run"]
    jobs = result["jobs"]
    done = [j for j in jobs if j["skipped"] is None]
    if done:
        table = Table(box=None, header_style="bold")
        for col in ("JOB", "STATE", "ENDED", "REMOVES", "FREES", "KEEPS"):
            table.add_column(col, overflow="fold")
        for j in done:
            what = "non-best checkpoints" if j["what"] == "checkpoints" else (
                "everything" if j["row"] == "deleted" else "the job")
            keeps = "-" if j["row"] == "deleted" else ", ".join(_kept(j)) or "-"
            table.add_row(j["job"], j["state"], when(j["ended_at"]), what, _bytes(j["bytes"]), keeps)
        console.print(table)
    unsynced = [run for j in jobs for run in j["wandb_unsynced"]]
    if unsynced:
        console.print("W&B offline runs never synced (kept; upload them, then prune again, or --include-wandb):")
        for run in unsynced:
            console.print(f"  wandb sync {shlex.quote(run)}")
    for j in jobs:
        if j["skipped"] is not None:
            console.print(f"[yellow]left {j['job']}: {j['skipped']}[/]")
    totals = result["totals"]
    verb = "would remove" if dry else "removed"
    console.print(f"{verb}: {totals['jobs']} jobs, the non-best checkpoints of {totals['checkpoint_only']} more "
                  f"({_bytes(totals['bytes'])}), {totals['events']:,} events, {totals['alerts']:,} delivered alerts"
                  + (" (dry run: nothing removed)" if dry else ""))


def _kept(job: dict[str, Any]) -> list[str]:
    kept = []
    if job.get("best"):
        kept.append("best checkpoint")
    if job.get("wandb_unsynced"):
        kept.append(f"{len(job['wandb_unsynced'])} unsynced W&B runs")
    return kept


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000
    return f"{n:.1f} TB"
