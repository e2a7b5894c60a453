"""A daemon of months (issue 35): ``list``, ``status``, the page's jobs list and daemon RSS at N finished jobs.

A real daemon (``ml-supervisor serve``, default tick, the web page on) runs ``--seeds`` fake-trainer jobs to
their end (one crashes once and restarts); then, daemon stopped, the state dir is filled up to each N of
``--ns`` with copies of those jobs (``tests/unit/clone_jobs.py``: the daemon's own rows and files, the seed's
id replaced by the copy's and the times shifted, so each copy ends at its own time), and the daemon is started
on it again. At each N, every figure the median of ``--repeat`` runs:

- ``list --json`` and ``list`` (the table) as a user runs them (a new ``supervisorctl`` process each time),
  their defaults (this version: the active jobs and the latest 50 finished); ``list --all --json`` too;
- ``status JOB`` of a finished job, and ``supervisorctl -h`` (the client's own start-up, asking the daemon
  nothing: the floor under every command);
- the page's jobs list: ``GET /api/jobs-page?limit=50`` (what the page asks), and ``GET /api/jobs`` (every job);
- the daemon's RSS after all of that.

``--finish K`` first runs K more short jobs through the daemon and reports its RSS before and after them (the
memory a finished job leaves in the daemon, which copies never pass through). ``--tree DIR`` runs another
checkout's daemon and ``supervisorctl`` (``git archive`` of an older commit unpacked in DIR) with this
checkout's harness: an older ``list`` takes no flags, and its defaults list every job. One JSON line per N,
then a table.

    .venv/bin/python bench/scale.py [--ns 100,1000,10000] [--finish 100] [--tree DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

from tests.support.harness import SUPPORT, DaemonProc, fake_env, write_config  # noqa: E402
from tests.unit.clone_jobs import clone_jobs, read_seeds  # noqa: E402

MB = 2**20


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """The median wall time of ``fn`` over ``repeat`` runs, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ctl(daemon: DaemonProc, *args: str) -> str:
    proc = subprocess.run([daemon.python, "-m", "supervisor.cli.ctl", *args], env=daemon.env, cwd=daemon.workdir,
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"supervisorctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def rss(daemon: DaemonProc) -> float:
    assert daemon.proc is not None
    return psutil.Process(daemon.proc.pid).memory_info().rss / MB


def web(daemon: DaemonProc) -> tuple[str, dict[str, str]]:
    """The page's base URL and its token header (``supervisorctl web-url``)."""
    url = ctl(daemon, "web-url").strip()
    base, _, token = url.partition("#token=")
    return base.rstrip("/"), {"Authorization": f"Bearer {token}"}


def run_seeds(daemon: DaemonProc, n: int) -> list[str]:
    """``n`` short jobs run to their end through the daemon (the first crashes once and is restarted)."""
    jobs = []
    for i in range(n):
        cfg = write_config(daemon.workdir, f"seed{i}", steps=20, step_time=0.01, ckpt_every=5,
                           crash_at=12 if i == 0 else None)
        jobs.append(daemon.submit(cfg))
    client = daemon.client()
    deadline = time.monotonic() + 600
    while any(client.call("status", job=j)["state"] not in ("completed", "failed") for j in jobs):
        if time.monotonic() > deadline:
            raise RuntimeError("the seed jobs did not end within 10 minutes")
        time.sleep(0.5)
    return jobs


def finish_jobs(daemon: DaemonProc, k: int) -> dict[str, float]:
    """RSS of the daemon before and after ``k`` more short jobs ran to their end (3 at a time)."""
    cfg = write_config(daemon.workdir, "churn", steps=5, step_time=0.01, ckpt_every=5)
    client = daemon.client()
    time.sleep(12)  # a tick or so after start
    before = rss(daemon)
    pending: list[str] = []
    submitted = 0
    while submitted < k or pending:
        while submitted < k and len(pending) < 3:
            pending.append(daemon.submit(cfg))
            submitted += 1
        pending = [j for j in pending if client.call("status", job=j)["state"] not in ("completed", "failed")]
        time.sleep(0.3)
    time.sleep(12)
    return {"finished_through_daemon": k, "rss_before_mb": round(before, 1), "rss_after_mb": round(rss(daemon), 1)}


def measure(daemon: DaemonProc, n: int, finished_job: str, repeat: int, new_cli: bool) -> dict[str, Any]:
    daemon.start("tick_interval=10.0", "web.enabled=true", "web.port=0")
    try:
        time.sleep(3)
        base, headers = web(daemon)
        figures: dict[str, Any] = {"n_finished": n}
        figures["client_startup_s"] = timed(lambda: ctl(daemon, "-h"), repeat)  # imports, parses, asks nothing
        listed = json.loads(ctl(daemon, "list", "--json"))
        figures["list_json_rows"] = len(listed)
        figures["list_json_s"] = timed(lambda: ctl(daemon, "list", "--json"), repeat)
        figures["list_table_s"] = timed(lambda: ctl(daemon, "list"), repeat)
        if new_cli:
            figures["list_all_json_s"] = timed(lambda: ctl(daemon, "list", "--all", "--json"), 1)
        figures["status_s"] = timed(lambda: ctl(daemon, "status", finished_job, "--json"), repeat)
        with httpx.Client(timeout=3600) as http:
            if new_cli:
                figures["page_jobs_page_s"] = timed(
                    lambda: http.get(f"{base}/api/jobs-page?limit=50", headers=headers).raise_for_status(), repeat)
            figures["page_all_jobs_s"] = timed(
                lambda: http.get(f"{base}/api/jobs", headers=headers).raise_for_status(), 1)
        figures["daemon_rss_mb"] = round(rss(daemon), 1)
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    finally:
        daemon.kill(signal.SIGTERM)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ns", default="100,1000,10000", help="numbers of finished jobs, comma-separated")
    parser.add_argument("--seeds", type=int, default=5, help="jobs the daemon runs for real, copied up to each N")
    parser.add_argument("--finish", type=int, default=0, help="jobs to finish through the daemon for its RSS")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tree", type=Path, default=HERE, help="the checkout whose daemon runs (default: this one)")
    args = parser.parse_args()
    tree = args.tree.resolve()
    ns = sorted(int(x) for x in args.ns.split(","))
    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: list[dict[str, Any]] = []
    try:
        state, work = base / "state", base / "work"
        work.mkdir()
        env = fake_env(state, PYTHONPATH=os.pathsep.join([str(SUPPORT), str(tree)]))
        daemon = DaemonProc(state, work, env)
        daemon.start("tick_interval=10.0")
        new_cli = "--all" in ctl(daemon, "list", "-h")
        seeds = run_seeds(daemon, args.seeds)
        churn = finish_jobs(daemon, args.finish) if args.finish else None
        daemon.kill(signal.SIGTERM)
        present = args.seeds + args.finish
        seed_rows = read_seeds(state / "supervisor.db", seeds)
        for n in ns:
            if n > present:
                clone_jobs(state, seed_rows, n - present, prefix=f"n{n}x")
                present = n
            figures = measure(daemon, present, seeds[-1], args.repeat, new_cli)
            figures["tree"] = str(tree)
            if churn and n == ns[0]:
                figures.update(churn)
            print(json.dumps(figures), flush=True)
            results.append(figures)
    finally:
        if "daemon" in locals() and daemon.proc is not None:
            daemon.kill(signal.SIGTERM)
        if "daemon" in locals():
            daemon.kill_leftovers()
        shutil.rmtree(base, ignore_errors=True)
    keys = [k for k in results[0] if k not in ("tree", "n_finished")]
    print(f"\n{'finished jobs':<24}" + "".join(f"{r['n_finished']:>12,}" for r in results))
    for key in keys:
        print(f"{key:<24}" + "".join(f"{r.get(key, ''):>12}" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
