"""2-rank DDP restart time on the digits example: SIGKILL of rank 1 -> first optimizer step of the next attempt.

The attempt monitor (``python -m supervisor.attempt_monitor --nproc-per-node 2``) runs the real trainer
on CPU with gloo; the script plays the daemon's part (it is not wired to the daemon yet): when the monitor
has written ``monitor-exit.json`` it picks the best checkpoint and starts the next attempt at once. Each
round kills rank 1 of the running attempt once it has trained a little. Stages per restart:

    record      SIGKILL of rank 1 -> rank 0's exit record written (it fails in its next collective)
    stop        SIGKILL of rank 1 -> every rank gone (the monitor stops rank 0; monitor-exit.json written)
    launch      -> both ranks' imports done (monitor spawn, interpreters, torch + Lightning), slower rank
    setup+load  -> the resume checkpoint restored on both ranks (process group, model, data, restore)
    first step  -> the first optimizer step ended on both ranks (sanity-check validation included)

Baseline, in the same script: attempt 1's cold start (launch -> first step on both ranks).

    .venv/bin/python bench/ddp_restart.py [--kills 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.manifest import live_checkpoints
from supervisor.jobfiles.monitorfiles import read_monitor_exit, read_monitor_start
from supervisor.resume import choose_resume

REPO = Path(__file__).resolve().parents[1]
RANKS = 2
OVERRIDES = ["trainer.devices=2", "trainer.strategy=ddp", "logger.wandb.mode=disabled", "trainer.max_epochs=1000",
             "checkpoint.every_n_train_steps=10", "data.init_args.batch_size=32",
             "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier", "model.init_args.step_delay=0.01"]
STAGES = ("record", "stop", "launch", "setup+load", "first step")


def launch(job: JobLayout, n: int, ckpt: str | None) -> subprocess.Popen[bytes]:
    attempt = job.attempt(n).dir
    attempt.mkdir(parents=True, exist_ok=True)
    trainer = [sys.executable, "-m", "trainer", "--config", str(REPO / "configs" / "digits.yaml"),
               "--attempt-dir", str(attempt), "--checkpoint-dir", str(job.checkpoints), "--attempt", str(n)]
    if ckpt:
        trainer += ["--ckpt", ckpt]
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    with open(attempt / "monitor.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "supervisor.attempt_monitor", "--attempt-dir", str(attempt),
                                 "--cwd", str(REPO), "--nproc-per-node", str(RANKS), "--", *trainer, *OVERRIDES],
                                cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True)


def marks(job: JobLayout, n: int, name: str, timeout: float = 300.0) -> float:
    """When the slower rank reached start-up mark ``name`` (wall clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beats = [read_heartbeat(job.attempt(n).heartbeat_of(r)) for r in range(RANKS)]
        if all(b is not None and name in b.marks for b in beats):
            return max(b.marks[name] for b in beats if b is not None)
        time.sleep(0.02)
    raise TimeoutError(f"attempt {n}: no {name} mark on every rank")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    rows: list[dict[str, float]] = []
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp:
        job = JobLayout(Path(tmp) / "job")
        try:
            started = time.time()
            procs.append(launch(job, 1, None))
            cold = marks(job, 1, "first_step") - started
            for n in range(1, args.kills + 1):
                while not live_checkpoints(job.manifest):
                    time.sleep(0.1)
                time.sleep(1.0)  # train a little past the start
                start = read_monitor_start(job.attempt(n).monitor_start)
                assert start is not None
                killed = time.time()
                os.kill(start.pids()[1], signal.SIGKILL)
                while (end := read_monitor_exit(job.attempt(n).monitor_exit)) is None:
                    time.sleep(0.005)
                gone = time.time()
                rank0 = read_exit_record(job.attempt(n).exit_record)
                choice = choose_resume(live_checkpoints(job.manifest), "best")
                procs.append(launch(job, n + 1, choice.path))
                imports = marks(job, n + 1, "imports_done")
                loaded = marks(job, n + 1, "checkpoint_loaded")
                first = marks(job, n + 1, "first_step")
                rows.append({"record": (rank0.time - killed) if rank0 else float("nan"),
                             "stop": gone - killed, "launch": imports - gone, "setup+load": loaded - imports,
                             "first step": first - loaded, "total": first - killed,
                             "rank 0 after rank 1": max(e.ended_at for e in end.ranks) - min(
                                 e.ended_at for e in end.ranks)})
                print(f"restart {n}: " + ", ".join(f"{k} {v:.2f}s" for k, v in rows[-1].items()), flush=True)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"\n2-rank DDP (CPU, gloo) SIGKILL of rank 1 -> first step of the next attempt, median of {len(rows)}: "
          f"{median['total']:.1f} s")
    print("  " + ", ".join(f"{k} {median[k]:.2f} s" for k in (*STAGES, "rank 0 after rank 1")))
    print(f"baseline: cold start of attempt 1 (launch -> first step on both ranks): {cold:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
