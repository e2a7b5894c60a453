"""``supervisorctl sweep ...``: create, status, list, stop hyperparameter sweeps.

    supervisorctl sweep create SWEEP.yaml [key=value ...]   overrides apply to the base job config; prints the id last
    supervisorctl sweep status SWEEP [--json]               trials table, best so far
    supervisorctl sweep list [--json]
    supervisorctl sweep stop SWEEP                          no new trials; running ones stop
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from supervisor.api.client import Client
from supervisor.cli.render import STATE_STYLE
from supervisor.sweep.spec import load_sweep_file

STATE_STYLE_SWEEP = {**STATE_STYLE, "pruned": "yellow"}


def add_sweep_parser(sub: Any) -> None:
    p = sub.add_parser("sweep", help="hyperparameter sweeps (W&B sweep format, searched by Optuna)")
    actions = p.add_subparsers(dest="sweep_command", required=True, metavar="ACTION")
    a = actions.add_parser("create", help="check a sweep file and start the sweep")
    a.add_argument("sweep_file")
    a.add_argument("overrides", nargs="*", metavar="key=value", help="applied to the base job config")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("status", help="a sweep's trials and best so far")
    a.add_argument("sweep")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("list", help="every sweep")
    a.add_argument("--json", action="store_true")
    a = actions.add_parser("stop", help="no new trials; running trials are stopped")
    a.add_argument("sweep")


def run_sweep_command(client: Client, console: Console, args: argparse.Namespace) -> int:
    cmd = args.sweep_command
    if cmd == "create":
        load_sweep_file(args.sweep_file, overrides=args.overrides)  # clear errors here, even without a daemon
        text = Path(args.sweep_file).read_text(encoding="utf-8")
        sweep = client.call("sweep_create", sweep_path=args.sweep_file, cwd=os.getcwd(), sweep_text=text,
                            overrides=list(args.overrides))
        if args.json:
            print(json.dumps(sweep, indent=2))
        print(sweep["id"])
        return 0
    if cmd == "status":
        sweep = client.call("sweep_status", sweep=args.sweep)
        if args.json:
            print(json.dumps(sweep, indent=2))
        else:
            sweep_detail(console, sweep)
        return 0
    if cmd == "list":
        sweeps = client.call("sweep_list")
        if args.json:
            print(json.dumps(sweeps, indent=2))
        elif not sweeps:
            console.print("no sweeps")
        else:
            console.print(sweeps_table(sweeps))
        return 0
    if cmd == "stop":
        sweep = client.call("sweep_stop", sweep=args.sweep)
        print(f"{sweep['id']}: stop requested ({sweep['state']})")
        return 0
    raise AssertionError(cmd)


def _value(value: Any) -> str:
    return "-" if value is None else f"{value:.6g}" if isinstance(value, float) else str(value)


def sweeps_table(sweeps: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for col in ("SWEEP", "STATE", "METHOD", "TRIALS", "BEST"):
        table.add_column(col)
    for s in sweeps:
        best = s["best"]["value"] if s["best"] else None
        table.add_row(s["id"], s["state"], s["method"], f"{len(s['trials'])}/{s['run_cap']}",
                      f"{s['metric']['name']} {_value(best)}")
    return table


def sweep_detail(console: Console, s: dict[str, Any]) -> None:
    metric = s["metric"]
    console.print(f"[bold]{s['id']}[/]  {s['state']}  {s['method']}  {metric['goal']} {metric['name']}  "
                  f"{len(s['trials'])}/{s['run_cap']} trials, {s['parallel']} at once")
    if s.get("detail"):
        console.print(s["detail"])
    keys = [p["key"] for p in s["parameters"]]
    table = Table(box=None, header_style="bold")
    for col in ("#", "JOB", "STATE", metric["name"].upper(), *keys):
        table.add_column(col)
    best_job = s["best"]["job_id"] if s["best"] else None
    for t in s["trials"]:
        state = t["state"]
        style = "bold" if t["job_id"] and t["job_id"] == best_job else ""
        table.add_row(str(t["n"]), t["job_id"] or "-", f"[{STATE_STYLE_SWEEP.get(state, '')}]{state}[/]",
                      _value(t["value"]), *(_value(t["params"].get(k)) for k in keys), style=style)
    console.print(table)
    if s["best"]:
        console.print(f"best: trial {s['best']['n']} ({s['best']['job_id']}) {metric['name']} = "
                      f"{_value(s['best']['value'])}")
    if s.get("note"):
        console.print(f"[dim]{s['note']}[/]")
