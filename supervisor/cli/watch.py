"""``supervisorctl watch [JOB]``: every job (or one) at a glance, refreshed about once a second.

On a terminal (ssh included; not ``TERM=dumb``): a full-screen table (rich's ``Live`` on the alternate
screen, so Ctrl-C leaves the screen as it was): per job a progress bar, step of target, speed, ETA, restarts,
time lost to faults, its GPUs as NVML reads them (memory, temperature) and its last event. Anywhere else
(``watch | cat``, a log file): plain lines, one per job when its state, step or restarts changed and one per
event, ending once every job watched has ended.

Each refresh asks the daemon for the jobs' status, the events since the last refresh and the GPUs; nothing is
computed here that ``status --json`` does not say.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from supervisor.api.client import Client
from supervisor.cli.listing import fetch_page
from supervisor.cli.render import STATE_STYLE, lost_text, progress_bar, progress_text, rate_text, when
from supervisor.config import format_duration
from supervisor.rules.states import TERMINAL_STATES

REFRESH_S = 1.0
WATCH_FINISHED = 20  # finished jobs the view shows beside the active ones
EVENT_PAGE = 1000


@dataclass
class Snapshot:
    """What one refresh knows: the jobs' status objects, each job's newest event, the GPUs (None: no NVML)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    last_event: dict[str, dict[str, Any]] = field(default_factory=dict)
    gpus: list[dict[str, Any]] | None = None
    new_events: list[dict[str, Any]] = field(default_factory=list)
    event_cursor: int = 0
    at: float = 0.0


def refresh(client: Client, job: str | None, previous: Snapshot) -> Snapshot:
    """Ask the daemon once more: status, the events since ``previous``, the GPUs."""
    # every active job and the latest finished ones (a daemon of months holds thousands of those)
    jobs = [client.call("status", job=job)] if job else fetch_page(client, {"limit": WATCH_FINISHED})["jobs"]
    events: list[dict[str, Any]] = []
    cursor = previous.event_cursor
    while True:  # the first refresh pages through the history once, to know each job's newest event
        page = client.call("events", after=cursor, job=job, limit=EVENT_PAGE)
        events.extend(page)
        if page:
            cursor = page[-1]["id"]
        if len(page) < EVENT_PAGE:
            break
    last = dict(previous.last_event)
    for event in events:
        if event.get("job_id"):
            last[event["job_id"]] = event
    try:
        gpus = client.call("gpus")
    except Exception:  # an older daemon, or a GPU read that failed: the view goes on without GPUs
        gpus = None
    return Snapshot(jobs=jobs, last_event=last, gpus=gpus, new_events=events, event_cursor=cursor, at=time.time())


def gpu_text(job: dict[str, Any], gpus: list[dict[str, Any]] | None) -> str:
    """``0: 12.3/80G 65C``, one per GPU the job's attempt holds; ``-`` without NVML or GPUs."""
    if not gpus:
        return "-"
    attempts = job.get("attempts") or []
    held = set(attempts[-1].get("gpus") or []) if attempts and attempts[-1].get("ended_at") is None else set()
    parts = []
    for g in gpus:
        if g.get("index") not in held and job["id"] not in (g.get("jobs") or []):
            continue
        used, total = g.get("memory_used_mib"), g.get("memory_total_mib")
        memory = "" if used is None or total is None else f" {used / 1024:.1f}/{total / 1024:.0f}G"
        temp = "" if g.get("temperature_c") is None else f" {g['temperature_c']:.0f}C"
        parts.append(f"{g['index']}:{memory}{temp}")
    return ", ".join(parts) or "-"


def _step_text(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    target = progress.get("target_step")
    return f"{job['global_step']}" + ("" if target is None or progress.get("target_from") == "budget"
                                      else f"/{target}")


def _eta_text(progress: dict[str, Any]) -> str:
    eta = progress.get("eta_s")
    if eta is None:
        return "-"
    late = progress.get("ends_by") == "budget" and progress.get("target_from") != "budget"
    return format_duration(eta) + (" (budget first)" if late else "")


def _event_text(event: dict[str, Any] | None) -> str:
    if not event:
        return "-"
    return f"{time.strftime('%H:%M:%S', time.localtime(event['time']))} {event['kind']}: {event['message']}"


def screen(snapshot: Snapshot, job: str | None) -> Group:
    """The live view: a header line and one row per job."""
    table = Table(box=None, header_style="bold", expand=True, pad_edge=False)
    table.add_column("JOB", no_wrap=True)
    table.add_column("STATE", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True)
    table.add_column("STEP", justify="right", no_wrap=True)
    table.add_column("SPEED", justify="right", no_wrap=True)
    table.add_column("ETA", no_wrap=True)
    table.add_column("RESTARTS", justify="right", no_wrap=True)
    table.add_column("LOST", no_wrap=True)
    table.add_column("GPU", no_wrap=True)
    table.add_column("LAST EVENT", overflow="ellipsis", no_wrap=True, ratio=1)
    for j in snapshot.jobs:
        progress = j.get("progress") or {}
        percent = progress.get("percent")
        state = j["state"]
        bar = f"{progress_bar(percent)} {'?' if percent is None else f'{percent:3.0f}%'}"
        table.add_row(Text(j["id"]), Text(state, style=STATE_STYLE.get(state, "")), Text(bar),
                      Text(_step_text(j)), Text(rate_text(progress.get("steps_per_s"))), Text(_eta_text(progress)),
                      Text(str(j["restarts"])), Text(lost_text(progress)), Text(gpu_text(j, snapshot.gpus)),
                      Text(_event_text(snapshot.last_event.get(j["id"]))))
    what = job or f"{len(snapshot.jobs)} job{'' if len(snapshot.jobs) == 1 else 's'}"
    gpus = "" if snapshot.gpus is not None else "  (no NVML: no GPU readings)"
    header = Text(f"ml-supervisor watch  {what}  {time.strftime('%H:%M:%S', time.localtime(snapshot.at))}"
                  f"  Ctrl-C to quit{gpus}", style="bold")
    body: Any = table if snapshot.jobs else Text("no jobs")
    return Group(header, body)


def plain_line(j: dict[str, Any], snapshot: Snapshot) -> str:
    """One job as a plain line (no bar, no colour): for a pipe or a log file."""
    progress = j.get("progress") or {}
    text = progress_text(progress, bar=False)
    target = progress.get("target_step")
    step = f"step {j['global_step']}" + ("" if target is None or progress.get("target_from") == "budget"
                                         else f"/{target}")
    lost = lost_text(progress)
    gpu = gpu_text(j, snapshot.gpus)
    return (f"{when(snapshot.at)} {j['id']} {j['state']} {step} {text} restarts {j['restarts']}"
            + ("" if lost == "-" else f" lost {lost}") + ("" if gpu == "-" else f" gpu {gpu}"))


def watch(client: Client, job: str | None, *, interval: float = REFRESH_S, tty: bool | None = None,
          out: TextIO | None = None, sleep: Callable[[float], None] = time.sleep) -> int:
    """Run the view until Ctrl-C (on a terminal) or until every job watched has ended (plain lines)."""
    stream = out if out is not None else sys.stdout
    console = Console(file=stream, highlight=False)
    # a terminal that cannot move its cursor (TERM=dumb, an editor's shell) gets the plain lines too
    on_tty = (stream.isatty() and not console.is_dumb_terminal) if tty is None else tty
    snapshot = refresh(client, job, Snapshot())
    if not on_tty:
        return _plain(client, job, snapshot, interval, stream, sleep)
    try:
        with Live(screen(snapshot, job), console=console, screen=True, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                started = time.monotonic()
                snapshot = refresh(client, job, snapshot)
                live.update(screen(snapshot, job), refresh=True)
                sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0  # Live's exit has put the screen back as it was


def _plain(client: Client, job: str | None, snapshot: Snapshot, interval: float, stream: TextIO,
           sleep: Callable[[float], None]) -> int:
    printed: dict[str, tuple[Any, ...]] = {}

    def show(snap: Snapshot, events: list[dict[str, Any]]) -> None:
        for event in events:
            print(f"{when(event['time'])} {event.get('job_id') or '-'} event {event['kind']}: {event['message']}",
                  file=stream)
        for j in snap.jobs:
            key = (j["state"], j["global_step"], j["restarts"])
            if printed.get(j["id"]) != key:
                printed[j["id"]] = key
                print(plain_line(j, snap), file=stream)
        stream.flush()

    try:
        show(snapshot, [])  # the history is not replayed: from now on
        while True:
            if not snapshot.jobs:
                print("no jobs", file=stream, flush=True)
                return 0
            if all(j["state"] in TERMINAL_STATES for j in snapshot.jobs):
                return 0
            sleep(interval)
            snapshot = refresh(client, job, snapshot)
            show(snapshot, snapshot.new_events)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # the reader left (supervisorctl itself dies quietly of SIGPIPE instead: see ctl)
        return 0
