"""A loss that turns NaN mid-run: what it costs with ml-supervisor against nobody watching.

The digits example (``FaultyDigitsClassifier``) returns a NaN loss once at
``--nan-at`` steps, ``--step-delay`` seconds a step. Side by side, same model,
data and cadence:

    (a) nobody watching  ``python -m trainer`` with divergence handling off: Lightning trains on
                         NaN weights to the last epoch (what a plain script or a restart loop does)
    (b) ml-supervisor    ``ml-supervisor run``, standby on: the guard stops the attempt at the bad
                         step, the daemon rolls back to the checkpoint before it, the standby takes over

Printed per contender: wall time, final val_loss, steps trained on NaN weights, and for (b) the
time from the bad step to the next attempt's first step and the steps recomputed after the rollback.

    .venv/bin/python bench/divergence.py [--nan-at 200] [--epochs 12] [--step-delay 0.05]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.jobfiles.atomic import read_json, read_json_lines  # noqa: E402

FAULTY = "trainer.examples.faulty.FaultyDigitsClassifier"


def overrides(args: argparse.Namespace) -> list[str]:
    return [f"model.class_path={FAULTY}", f"model.init_args.nan_at_step={args.nan_at}",
            "model.init_args.record_batches=true", f"model.init_args.step_delay={args.step_delay}",
            f"trainer.max_epochs={args.epochs}", "checkpoint.every_n_train_steps=10", "logger.wandb.mode=disabled"]


def batches(attempt_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (attempt_dir / "batches.jsonl").read_text().splitlines()]


def nobody_watching(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    attempt = work / "plain"
    start = time.time()
    subprocess.run([sys.executable, "-m", "trainer", "--config", str(REPO / "configs/digits.yaml"),
                    "--attempt-dir", str(attempt), "--checkpoint-dir", str(work / "plain-ckpt"),
                    *overrides(args), "supervision.divergence.enabled=false"],
                   cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - start
    seen = batches(attempt)
    bad = [b for b in seen if b["step"] >= args.nan_at]
    beat = read_json(attempt / "heartbeat.json") or {}
    return {"wall_s": wall, "val_loss": (beat.get("metrics") or {}).get("val_loss"),
            "nan_steps": len(bad), "nan_time_s": seen[-1]["time"] - bad[0]["time"] if bad else 0.0}


def supervised(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    state = work / "state"
    start = time.time()
    subprocess.run([sys.executable, "-m", "supervisor.cli.main", "--state-dir", str(state), "run",
                    str(REPO / "configs/digits.yaml"), *overrides(args), "supervision.standby=on",
                    "supervision.resume_from=last"],
                   cwd=REPO, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.time() - start
    job_dir = next((state / "jobs").iterdir())
    a1, a2 = job_dir / "attempts/1", job_dir / "attempts/2"
    bad_at = next(b["time"] for b in batches(a1) if b["step"] == args.nan_at)
    first_step = ((read_json(a2 / "heartbeat.json") or {}).get("marks") or {}).get("first_step")
    launch = [e for e in read_json_lines(job_dir / "checkpoints/manifest.jsonl") if e.get("event") == "save"]
    resumed = batches(a2)[0]["step"]
    beat = read_json(a2 / "heartbeat.json") or {}
    return {"wall_s": wall, "val_loss": (beat.get("metrics") or {}).get("val_loss"), "nan_steps": 0,
            "bad_to_training_s": (first_step - bad_at) if first_step else math.nan,
            "recomputed_steps": args.nan_at - resumed, "saves": len(launch)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nan-at", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--step-delay", type=float, default=0.05)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-divergence-") as tmp:
        work = Path(tmp)
        plain = nobody_watching(args, work)
        sup = supervised(args, work)
    print(f"NaN at step {args.nan_at}, {args.epochs} epochs of 23 steps, {args.step_delay}s a step")
    print(f"{'contender':<18}{'wall s':>8}{'final val_loss':>16}{'steps on NaN':>14}")
    for name, r in (("nobody watching", plain), ("ml-supervisor", sup)):
        loss = r["val_loss"]
        shown = "nan" if loss is None or (isinstance(loss, float) and math.isnan(loss)) else f"{loss:.4f}"
        print(f"{name:<18}{r['wall_s']:>8.1f}{shown:>16}{r['nan_steps']:>14}")
    print(f"nobody watching: {plain['nan_time_s']:.1f} s of training after the bad step, all of it on NaN weights")
    print(f"ml-supervisor: bad step -> next attempt's first step {sup['bad_to_training_s']:.2f} s; "
          f"{sup['recomputed_steps']} step(s) recomputed after the rollback")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
