"""``supervisorctl``: talk to the running daemon.

    supervisorctl submit CONFIG [key=value ...] [--name NAME]
    supervisorctl submit CONFIG --at TIME | --cron LINE [--tz ZONE] [--misfire run_once|skip]   (later, or recurring)
    supervisorctl schedules [--all] [--json]  supervisorctl unschedule ID
    supervisorctl status [JOB] [--json]      supervisorctl list [--all | --limit N] [--since 7d] [--state S] [--json]
    supervisorctl prune [--older-than 30d] [--dry-run] [--include-best] [--include-wandb]   (see cli/prune.py)
    supervisorctl logs JOB [-f] [--attempt N]
    supervisorctl history JOB [--json]       supervisorctl events [JOB] [-f] [--json]
    supervisorctl stop JOB                   supervisorctl restart JOB
    supervisorctl gpus [--json]              supervisorctl gpus clear N
    supervisorctl watch [JOB] [--interval S] (a live view; plain lines when not on a terminal)
    supervisorctl web-url
    supervisorctl sweep create|status|list|stop ...   (see supervisor/cli/sweep.py)
    supervisorctl --version
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any

from rich.console import Console

from supervisor import __version__
from supervisor.api.client import Client
from supervisor.cli.common import add_state_dir, run_guarded, share_global_flags, state_dir_of, submit_request
from supervisor.cli.listing import add_list_flags, list_command
from supervisor.cli.prune import add_prune_parser, prune_command
from supervisor.cli.render import attempts_table, event_line, gpus_table, job_detail, make_console
from supervisor.cli.schedules import (
    add_schedule_flags,
    add_schedule_parsers,
    is_scheduled_submit,
    run_schedule_command,
    submit_schedule,
)
from supervisor.cli.sweep import add_sweep_parser, run_sweep_command
from supervisor.cli.watch import REFRESH_S, watch
from supervisor.errors import SupervisorError
from supervisor.rules.states import TERMINAL_STATES
from supervisor.web.token import read_web_url

PROG = "supervisorctl"
FOLLOW_INTERVAL = 0.5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Control the ml-supervisor daemon.")
    parser.add_argument("--version", action="version", version=f"{PROG} (ml-supervisor) {__version__}")
    add_state_dir(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("submit", help="validate a job config and queue it")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--name", default=None, help="the job's name (default: the config's name)")
    p.add_argument("--json", action="store_true", help="print the new job's status object")
    add_schedule_flags(p)

    p = sub.add_parser("status", help="a table of jobs, or one job in detail")
    p.add_argument("job", nargs="?")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="the active jobs and the latest finished ones (--all: every one)")
    p.add_argument("--json", action="store_true")
    add_list_flags(p)
    add_prune_parser(sub)

    p = sub.add_parser("logs", help="an attempt's stdout and stderr")
    p.add_argument("job")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing, across restarts, until the job ends")
    p.add_argument("--attempt", type=int, default=None, help="attempt number (default: the latest)")

    p = sub.add_parser("history", help="attempts: start, end, cause, resumed-from checkpoint")
    p.add_argument("job")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("events", help="what happened, oldest first")
    p.add_argument("job", nargs="?")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = sub.add_parser("watch", help="a live view of every job, or one: progress, speed, ETA, restarts, GPUs")
    p.add_argument("job", nargs="?")
    p.add_argument("--interval", type=float, default=REFRESH_S, help="seconds between refreshes (default 1)")

    p = sub.add_parser("gpus", help="GPU health, quarantine and placement")
    p.add_argument("action", nargs="?", choices=["clear"], help="clear N: lift GPU N's quarantine")
    p.add_argument("index", nargs="?", type=int)
    p.add_argument("--json", action="store_true")

    sub.add_parser("web-url", help="the web page's address, with its token")
    add_sweep_parser(sub)
    add_schedule_parsers(sub)

    for name, text in (("stop", "stop a job gracefully (SIGTERM, grace period, SIGKILL)"),
                       ("restart", "relaunch a job from its best checkpoint")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job")
    share_global_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    client = Client(state_dir_of(args))
    console = make_console()
    cmd = args.command
    if cmd == "submit":
        scheduled = is_scheduled_submit(args)
        req = submit_request(args.config, args.overrides, args.name)
        if scheduled:
            return submit_schedule(client, req, args)
        job = client.call("submit", config_path=req.config_path, cwd=req.cwd, config_text=req.config_text,
                          overrides=req.overrides, name=req.name)
        if args.json:
            _print_json(job)
        print(job["id"])
        return 0
    if cmd in ("schedules", "unschedule"):
        return run_schedule_command(client, console, args)
    if cmd == "status" and not args.job and not args.json:
        _daemon_line(client, console)
    if cmd == "status" and args.job:
        job = client.call("status", job=args.job)
        if args.json:
            _print_json(job)
        else:
            job_detail(console, job)
        return 0
    if cmd in ("status", "list"):
        return list_command(client, console, args)
    if cmd == "prune":
        return prune_command(client, console, args)
    if cmd == "history":
        attempts = client.call("history", job=args.job)
        if args.json:
            _print_json(attempts)
        else:
            console.print(attempts_table(attempts))
        return 0
    if cmd == "events":
        return _events(client, args)
    if cmd == "logs":
        return _logs(client, args)
    if cmd == "gpus":
        return _gpus(client, console, args)
    if cmd == "watch":
        if not sys.stdout.isatty():  # `watch | head`: end quietly when the reader leaves, as cat or grep do
            signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        return watch(client, args.job, interval=max(0.1, args.interval))
    if cmd == "sweep":
        return run_sweep_command(client, console, args)
    if cmd == "web-url":
        print(read_web_url(state_dir_of(args)))
        return 0
    if cmd in ("stop", "restart"):
        job = client.call(cmd, job=args.job)
        print(f"{job['id']}: {job['state']}")
        return 0
    raise AssertionError(cmd)


def _daemon_line(client: Client, console: Console) -> None:
    """``status``'s first line: the daemon's version (and this command's, when an upgrade left them apart)."""
    ping = client.call("ping")
    mine = "" if ping.get("version") == __version__ else f" (this supervisorctl: {__version__})"
    console.print(f"ml-supervisor {ping.get('version')}{mine} · pid {ping.get('pid')} · {ping.get('state_dir')}",
                  style="dim", markup=False, highlight=False)


def _gpus(client: Client, console: Console, args: argparse.Namespace) -> int:
    if args.action == "clear":
        if args.index is None:
            raise SupervisorError("usage: supervisorctl gpus clear N")
        result = client.call("gpus_clear", index=args.index)
        print(f"gpu {args.index}: {'quarantine cleared' if result['cleared'] else 'was not quarantined'}")
        return 0
    gpus = client.call("gpus")
    if args.json:
        _print_json(gpus if gpus is not None else [])
    elif gpus is None:
        console.print("no GPUs: NVML is not available on this node (CPU jobs run as usual)")
    else:
        console.print(gpus_table(gpus))
    return 0


def _events(client: Client, args: argparse.Namespace) -> int:
    after = 0
    while True:
        events = client.call("events", after=after, job=args.job)
        for event in events:
            print(json.dumps(event) if args.json else event_line(event), flush=True)
            after = event["id"]
        if not args.follow:
            return 0
        time.sleep(FOLLOW_INTERVAL)


def _logs(client: Client, args: argparse.Namespace) -> int:
    attempt = args.attempt
    offsets: dict[str, int] = {}
    while True:
        chunk = client.call("logs", job=args.job, attempt=attempt, offsets=offsets)
        if chunk["attempt"] is not None and attempt is None:
            attempt = chunk["attempt"]
        sys.stdout.write(chunk["stdout"])
        sys.stderr.write(chunk["stderr"])
        sys.stdout.flush()
        offsets = chunk["offsets"]
        if not args.follow:
            return 0
        if chunk["stdout"] or chunk["stderr"]:
            continue
        if args.attempt is None and chunk.get("latest_attempt") and chunk["latest_attempt"] != attempt:
            # the job restarted: follow the new attempt
            attempt, offsets = chunk["latest_attempt"], {}
            print(f"--- attempt {attempt} ---", file=sys.stderr, flush=True)
            continue
        if chunk["done"] and client.call("status", job=args.job)["state"] in TERMINAL_STATES:
            return 0
        time.sleep(FOLLOW_INTERVAL)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
