"""How long a checkpoint save stalls the step loop: synchronous against ``checkpoint.async: true``.

``python -m trainer`` fits the digits classifier with a ``ballast_mb`` buffer (saved in
every checkpoint, no compute: a model whose saves cost what a big one's do) for
``--steps`` steps, three arms alternating over ``--rounds`` (a shared box's load drifts):

    none   no save during the fit (only the final one, after the timed part)
    sync   a save every ``--every`` steps, written on the step loop's thread
    async  the same saves with checkpoint.async: true

Per run: the training time (the first optimizer step to the exit record, from the heartbeat's
``first_step`` mark; every arm ends with the same synchronous final save, so it cancels out)
and the manifest's ``save_s`` of each write (the blocking part: for async the wait for the
previous write plus the snapshot).
Printed per arm: the median ``save_s``, and the stall per save as the step loop saw it:
(training time - the ``none`` arm's) / saves, which also counts the writer thread's
competition for the CPU.

    .venv/bin/python bench/checkpoint_stall.py [--ballast-mb 512] [--steps 1190] [--every 200] [--rounds 2]
        [--step-delay 0.01] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.exitrecord import read_exit_record
from supervisor.jobfiles.heartbeat import read_heartbeat
from tests.support.harness import REPO

ARMS = ("none", "sync", "async")


def fit(root: Path, arm: str, args: argparse.Namespace) -> tuple[float, list[float], int]:
    """One fit; returns (training seconds, save_s of each write, saves)."""
    attempt, ckpt = root / "a1", root / "ckpt"
    every = args.steps * 10 if arm == "none" else args.every
    cmd = [sys.executable, "-m", "trainer", "--config", str(REPO / "configs" / "digits.yaml"),
           "--attempt-dir", str(attempt), "--checkpoint-dir", str(ckpt),
           "model.class_path=trainer.examples.faulty.FaultyDigitsClassifier",
           f"model.init_args.ballast_mb={args.ballast_mb}", f"model.init_args.step_delay={args.step_delay}",
           f"checkpoint.every_n_train_steps={every}",
           "checkpoint.monitor=null", "checkpoint.save_top_k=1", f"checkpoint.async={str(arm == 'async').lower()}",
           "logger.wandb.mode=disabled", f"trainer.max_steps={args.steps}", "trainer.max_epochs=1000",
           "trainer.limit_val_batches=0"]
    env = dict(os.environ, PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    if args.threads:  # torch's intra-op threads (OpenMP): on a small box the writer's core is one of them
        env["OMP_NUM_THREADS"] = str(args.threads)
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=1800)
    record, beat = read_exit_record(attempt / "exit.json"), read_heartbeat(attempt / "heartbeat.json")
    assert record is not None and beat is not None and record.global_step == args.steps, record
    # Until the exit record: every arm ends with the same synchronous final save (--steps is not a multiple of
    # --every), which cancels out of the differences.
    writes = [e for e in read_json_lines(ckpt / "manifest.jsonl")
              if e.get("event") == "save" and e.get("kind") == "topk" and e["step"] < args.steps]
    return record.time - beat.marks["first_step"], [float(e["save_s"]) for e in writes], len(writes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ballast-mb", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1190)
    parser.add_argument("--every", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--step-delay", type=float, default=0.01,
                        help="seconds of sleep per step (a GPU's step leaves the CPU as idle)")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for every arm (0: torch's default)")
    args = parser.parse_args()
    train: dict[str, list[float]] = {a: [] for a in ARMS}
    costs: dict[str, list[float]] = {a: [] for a in ARMS}
    saves: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-stall-") as tmp:
        for r in range(args.rounds):
            for arm in ARMS[r % 3:] + ARMS[:r % 3]:
                seconds, save_s, n = fit(Path(tmp) / f"{arm}-{r}", arm, args)
                train[arm].append(seconds)
                costs[arm] += save_s
                saves[arm] = n
                one, five, _ = os.getloadavg()
                print(f"round {r + 1} {arm:5s}: {seconds:6.1f} s of training, {n} saves, "
                      f"save_s median {statistics.median(save_s) if save_s else 0:.3f} s  "
                      f"(load {one:.1f} / {five:.1f}, {time.strftime('%H:%M:%S', time.gmtime())} UTC)", flush=True)
    base = statistics.median(train["none"])
    print(f"\n{args.steps} steps, a save every {args.every} steps, ballast {args.ballast_mb} MB, "
          f"OMP_NUM_THREADS {args.threads or 'default'}, step_delay {args.step_delay} s, "
          f"{os.cpu_count()} cores (shared), {args.rounds} round(s)")
    print(f"  none   training {base:6.1f} s")
    for arm in ("sync", "async"):
        t = statistics.median(train[arm])
        print(f"  {arm:5s}  training {t:6.1f} s  stall per save {(t - base) / max(1, saves[arm]):6.3f} s  "
              f"save_s median {statistics.median(costs[arm]):6.3f} s  (min {min(costs[arm]):.3f}, "
              f"max {max(costs[arm]):.3f}, {len(costs[arm])} saves)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
