"""Memory and CPU of a running sweep: the daemon (never imports Optuna) and the sweep worker (owns the study).

Baseline, in the same script: the same daemon idle before the sweep. A random sweep
of long fake-trainer trials (``--parallel`` at once) runs while both processes are sampled.

    .venv/bin/python bench/sweep_footprint.py [--parallel 4] [--seconds 20]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.daemon_footprint import sample
from tests.support.harness import DaemonProc, fake_env, wait_for, write_config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        root = Path(tmp)
        work = root / "work"
        work.mkdir()
        daemon = DaemonProc(root / "state", work, fake_env(root / "state"))
        daemon.start("tick_interval=10.0")
        try:
            assert daemon.proc is not None
            proc = psutil.Process(daemon.proc.pid)
            idle_rss, idle_cpu = sample(proc, args.seconds / 2)
            base = write_config(work, "base", steps=100000, step_time=0.05, ckpt_every=200, val_every=40,
                                heartbeat_every=2.0)
            sweep_file = work / "sweep.yaml"
            sweep_file.write_text(yaml.safe_dump({
                "config": base.name, "method": "bayes", "metric": {"name": "val_loss"}, "run_cap": args.parallel,
                "parallel": args.parallel, "seed": 0,
                "parameters": {"model.init_args.x": {"min": 0.0, "max": 1.0}}}))
            sweep = daemon.ctl("sweep", "create", str(sweep_file)).stdout.strip().splitlines()[-1]
            wait_for(lambda: sum(t["state"] == "running" for t in
                                 daemon.client().call("sweep_status", sweep=sweep)["trials"]) == args.parallel,
                     timeout=120, what="every trial running")
            worker = psutil.Process(int((root / "state" / "sweeps" / sweep / "worker.pid").read_text()))
            rss, cpu = sample(proc, args.seconds)
            worker_rss, worker_cpu = sample(worker, args.seconds / 2)
            print(f"daemon idle (baseline):            {idle_rss:6.1f} MB RSS, {idle_cpu:5.2f} % of a core")
            print(f"daemon during a {args.parallel}-trial sweep:     {rss:6.1f} MB RSS, {cpu:5.2f} % of a core")
            print(f"sweep worker (Optuna, TPE, SQLite): {worker_rss:6.1f} MB RSS, {worker_cpu:5.2f} % of a core")
            daemon.ctl("sweep", "stop", sweep)
            wait_for(lambda: daemon.client().call("sweep_status", sweep=sweep)["state"] == "stopped", timeout=120)
        finally:
            daemon.kill(signal.SIGTERM)
            daemon.kill_leftovers()
    return 0


if __name__ == "__main__":
    sys.exit(main())
