"""``supervisorctl submit CONFIG --at TIME | --cron LINE``, ``supervisorctl schedules``, ``unschedule ID``.

    supervisorctl submit job.yaml --at "2026-12-08 02:00"      one run, then
    supervisorctl submit job.yaml --cron "0 2 * * *"           every night at 02:00 (crontab's five fields)
        [--tz Europe/Berlin] [--misfire run_once|skip]
    supervisorctl schedules [--all] [--json]
    supervisorctl unschedule ID

The daemon checks the rule and the config at once (one line on an error) and keeps the
schedule; each run is a normal job of its own (``status``, ``logs``, ``stop``).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from supervisor.api.client import Client
from supervisor.core.schedule_times import MISFIRE_CHOICES
from supervisor.core.submit import SubmitRequest
from supervisor.errors import SupervisorError


def add_schedule_flags(submit: argparse.ArgumentParser) -> None:
    """``submit``'s flags that make it a schedule instead of a job now."""
    when = submit.add_mutually_exclusive_group()
    when.add_argument("--at", default=None, metavar="TIME",
                      help='run once at this time ("2026-12-08 02:00", ISO 8601; local time unless --tz or an offset)')
    when.add_argument("--cron", default=None, metavar="LINE",
                      help='run on a cron schedule ("0 2 * * *": minute hour day month weekday; or @daily, ...)')
    submit.add_argument("--tz", default=None, metavar="ZONE",
                        help="the time zone --at and --cron are read in (default: the daemon's)")
    submit.add_argument("--misfire", choices=MISFIRE_CHOICES, default=None,
                        help="a run missed while the daemon was down: start it once at the next start (run_once, "
                             "the default) or skip it")


def add_schedule_parsers(sub: Any) -> None:
    p = sub.add_parser("schedules", help="scheduled and recurring runs: next run times, runs, last job")
    p.add_argument("--all", action="store_true", help="also those done or removed")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("unschedule", help="stop a schedule's future runs (runs already started go on)")
    p.add_argument("schedule", metavar="ID")


def is_scheduled_submit(args: argparse.Namespace) -> bool:
    if args.at is None and args.cron is None:
        if args.tz is not None or args.misfire is not None:
            raise SupervisorError("--tz and --misfire go with --at or --cron")
        return False
    return True


def submit_schedule(client: Client, req: SubmitRequest, args: argparse.Namespace) -> int:
    row = client.call("schedule", config_path=req.config_path, cwd=req.cwd, config_text=req.config_text,
                      overrides=req.overrides, name=req.name, at=args.at, cron=args.cron, timezone=args.tz,
                      misfire=args.misfire or "run_once")
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    print(f"{row['id']}: {_rule(row)} (misfire: {row['misfire']}); each run a job of its own")
    print("next run" + ("s" if len(row["next_runs_text"]) > 1 else "") + ": " + ", ".join(row["next_runs_text"]))
    return 0


def run_schedule_command(client: Client, console: Console, args: argparse.Namespace) -> int:
    if args.command == "unschedule":
        row = client.call("unschedule", schedule=args.schedule)
        print(f"{row['id']}: {row['state']}")
        return 0
    rows = client.call("schedules", all=args.all)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        console.print(schedules_table(rows))
    else:
        console.print("no schedules" + ("" if args.all else " (--all shows those done or removed)"))
    return 0


def schedules_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False)
    for name in ("ID", "NAME", "WHEN", "NEXT RUN", "RUNS", "LAST JOB", "STATE"):
        table.add_column(name, no_wrap=name in ("ID", "NEXT RUN"))
    for row in rows:
        state = row["state"]
        if row["last_error"]:
            state += f" (last run did not start: {row['last_error']})"
        elif row["skipped"]:
            state += f" ({row['skipped']} missed)"
        table.add_row(row["id"], row["name"], _rule(row), (row["next_runs_text"] or ["-"])[0],
                      str(row["runs"]), row["last_job_id"] or "-", state)
    return table


def _rule(row: dict[str, Any]) -> str:
    what = f"cron {row['spec']!r}" if row["kind"] == "cron" else f"at {row['spec']}"
    return f"{what} in {row['timezone']}"
