"""``supervisorctl list`` (and ``status`` without a job): the active jobs and the latest finished ones.

    supervisorctl list [--all | --limit N] [--since 7d|DATE] [--state S ...] [--json]

By default the active jobs and the 50 that ended last: a daemon of months holds thousands of finished jobs, and
``list`` costs what it shows (the daemon answers a finished job from its store row, never its files).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from typing import Any

from rich.console import Console

from supervisor.api.client import Client
from supervisor.cli.render import jobs_table
from supervisor.config import parse_duration
from supervisor.errors import SupervisorError
from supervisor.rules.states import JobState

DEFAULT_LIMIT = 50


def add_list_flags(parser: argparse.ArgumentParser) -> None:
    """``--all``, ``--limit``, ``--since``, ``--state`` (the finished jobs a list shows; active ones always)."""
    parser.add_argument("--all", action="store_true", help="every finished job (default: the latest 50)")
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                        help=f"finished jobs to show, the latest to end first (default {DEFAULT_LIMIT})")
    parser.add_argument("--since", default=None, metavar="AGE|DATE",
                        help="finished jobs that ended within AGE (7d, 12h) or since DATE (2025-01-31[T08:00])")
    parser.add_argument("--state", action="append", choices=[s.value for s in JobState], default=None,
                        help="only jobs in this state (repeat for several)")


def since_time(text: str | None, now: float | None = None) -> int | None:
    """``--since``: an age (``7d``) back from now, or a date/time (local time): a Unix time; ``SupervisorError``
    for anything else."""
    if text is None:
        return None
    try:
        return int((time.time() if now is None else now) - parse_duration(text))
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        raise SupervisorError(f"--since: expected an age like 7d or 12h, or a date like 2025-01-31, "
                              f"got {text!r}") from None


def list_request(args: argparse.Namespace) -> dict[str, Any]:
    """The ``list_page`` arguments of these flags."""
    limit = getattr(args, "limit", DEFAULT_LIMIT)
    if limit is not None and limit < 0:
        raise SupervisorError(f"--limit: expected 0 or more, got {limit}")
    request: dict[str, Any] = {"limit": None if getattr(args, "all", False) else limit}
    since = since_time(getattr(args, "since", None))
    if since is not None:
        request["since"] = max(0, since)
    if getattr(args, "state", None):
        request["states"] = list(args.state)
    return request


def fetch_page(client: Client, request: dict[str, Any]) -> dict[str, Any]:
    """The daemon's ``list_page``; from a daemon older than it, its ``list`` (every job) as one page."""
    try:
        return client.call("list_page", **request)
    except SupervisorError as exc:
        if "unknown operation" not in exc.message:
            raise
    jobs = client.call("list")
    finished = sum(1 for j in jobs if j["state"] in {s.value for s in JobState if s.terminal})
    return {"jobs": jobs, "active": len(jobs) - finished,
            "finished": {"total": finished, "offset": 0, "limit": None, "shown": finished}, "counts": {}}


def list_command(client: Client, console: Console, args: argparse.Namespace) -> int:
    page = fetch_page(client, list_request(args))
    jobs = page["jobs"]
    if args.json:
        print(json.dumps(jobs, indent=2, default=str))
        return 0
    if jobs:
        console.print(jobs_table(jobs))
    else:
        console.print("no jobs" if not page["finished"]["total"] else "no active jobs")
    more = footer(page)
    if more:
        console.print(f"[dim]{more}[/]")
    return 0


def footer(page: dict[str, Any]) -> str | None:
    """``showing the latest 50 of 10,000 finished jobs (--all, --limit N, --since 7d, --state failed)``, when
    some finished jobs are not shown."""
    finished = page["finished"]
    total, shown = int(finished["total"]), int(finished["shown"])
    if shown >= total:
        return None
    return (f"showing the latest {shown:,} of {total:,} finished jobs "
            "(--all, --limit N, --since 7d, --state failed for others)")
