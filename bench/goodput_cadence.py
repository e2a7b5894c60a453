"""Goodput under periodic SIGKILLs when saves cost seconds: fixed intervals, ``auto``, ``auto`` + async, the loop.

A sibling of ``bench/goodput.py`` (its ``run``: SIGKILL the trainer every ``--kill-every`` s,
read the global step reached ``--duration`` s after the launch) on a model whose saves
cost seconds: the digits classifier with a ``--ballast-mb`` buffer (saved in every
checkpoint, no compute). Contenders, side by side in one run:

    loop every N        ``until python train.py; do :; done``, Lightning's ModelCheckpoint every ``--every`` steps
    sup every F         ml-supervisor (standby on), every ``--frequent`` steps
    sup every R         ml-supervisor, every ``--rare`` steps
    sup auto            ``every_n_train_steps: auto`` (``assumed_mtbf: --assumed-mtbf``)
    sup auto+async      the same with ``checkpoint.async: true``

Goodput = the final global step / the steps an uninterrupted run without saves reaches in
the same time (the plain loop, never killed, never saving: what the hardware gives).

    .venv/bin/python bench/goodput_cadence.py [--duration 600] [--kill-every 60] [--ballast-mb 512]
        [--every 100] [--frequent 25] [--rare 1000] [--assumed-mtbf 60s]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from goodput import FIRST_STEP_AFTER, load, run
from restart_compare import TRAIN_SCRIPT, PlainLoop, SupervisedStandby

from supervisor.jobfiles.atomic import read_json_lines

# The loop's script with the same ballast buffer.
BALLAST_SCRIPT = TRAIN_SCRIPT.replace(
    "FaultyDigitsClassifier(step_delay=delay,",
    "FaultyDigitsClassifier(step_delay=delay, ballast_mb=int(os.environ['BENCH_BALLAST_MB']),")


class BallastLoop(PlainLoop):
    """The plain loop on the ballast model, checkpointing every ``every`` steps (None: never)."""

    def __init__(self, root: Path, args: argparse.Namespace, every: int | None) -> None:
        self.name = f"loop every {every}" if every else "uninterrupted, no saves"
        super().__init__(root, args)
        self.every = every
        self.env["BENCH_BALLAST_MB"] = str(args.ballast_mb)

    def command(self) -> list[str]:
        script = self.root / "train.py"
        script.write_text(BALLAST_SCRIPT)
        every = self.every or 10**9
        return ["bash", "-c", f"until {sys.executable} {script} {self.root / 'ckpt'} {every} "
                              f"{self.args.step_delay} cpu; do :; done"]


class Cadenced(SupervisedStandby):
    """ml-supervisor on the ballast model with a given save interval (a number or ``auto``) and async on or off."""

    def __init__(self, root: Path, args: argparse.Namespace, every: int | str, async_save: bool) -> None:
        self.name = f"sup every {every}" if every != "auto" else "sup auto" + ("+async" if async_save else "")
        super().__init__(root, args)
        self.cadence, self.async_save = every, async_save

    def configure(self, cfg: dict[str, Any]) -> None:
        cfg["model"]["init_args"]["ballast_mb"] = self.args.ballast_mb
        cfg["checkpoint"].update({"every_n_train_steps": self.cadence, "async": self.async_save,
                                  "assumed_mtbf": self.args.assumed_mtbf})

    def stop(self) -> None:
        try:  # the interval in force at the end (auto: what the daemon chose for the last attempt, and why)
            self.checkpointing = self.daemon.status(self.job).get("checkpointing") or {}
        except Exception as exc:  # the summary says so; the run's figure stands
            self.checkpointing = {"error": str(exc)}
        super().stop()

    def summary(self) -> str:
        """What the run's saves were: how many, their stall (save_s), the interval in force at the end."""
        manifest = next(self.root.rglob("manifest.jsonl"), None)
        events = read_json_lines(manifest) if manifest else []
        writes = [e for e in events if e.get("event") == "save" and e.get("kind") == "topk"]
        stalls = sorted(float(e["save_s"]) for e in writes if e.get("save_s") is not None)
        median = stalls[len(stalls) // 2] if stalls else 0.0
        ckpt = getattr(self, "checkpointing", {})
        cadence = ckpt.get("cadence") or {}
        why = f" (save_s {cadence.get('save_s')}, mtbf {cadence.get('mtbf_s')} s, step {cadence.get('step_s')} s)" \
            if cadence else ""
        return (f"{len(writes)} saves, save_s median {median:.2f} s, every {ckpt.get('every_n_train_steps')} steps "
                f"at the end{why}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--ballast-mb", type=int, default=512, help="MB saved in every checkpoint")
    parser.add_argument("--every", type=int, default=100, help="the user's interval (the loop's), in steps")
    parser.add_argument("--frequent", type=int, default=25)
    parser.add_argument("--rare", type=int, default=1000)
    parser.add_argument("--assumed-mtbf", default="60s", help="checkpoint.assumed_mtbf for the auto contenders")
    parser.add_argument("--step-delay", type=float, default=0.02)
    parser.add_argument("--only", action="append", help="run only these contenders besides the baseline")
    args = parser.parse_args()
    args.settle, args.accelerator = 0.0, "cpu"  # restart_compare's contenders read them
    results: dict[str, int] = {}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-goodput-cadence-") as tmp:
        root = Path(tmp)
        base = run(BallastLoop(root / "base", args, None), args.duration, None, "uninterrupted")
        print(f"uninterrupted, no saves: step {base}  {load()}", flush=True)
        contenders = [BallastLoop(root, args, args.every), Cadenced(root, args, args.frequent, False),
                      Cadenced(root, args, args.rare, False), Cadenced(root, args, "auto", False),
                      Cadenced(root, args, "auto", True)]
        for contender in contenders:
            if args.only and contender.name not in args.only:
                continue
            results[contender.name] = run(contender, args.duration, args.kill_every)
            if isinstance(contender, Cadenced):
                notes[contender.name] = contender.summary()
            print(f"{contender.name}: step {results[contender.name]}  {notes.get(contender.name, '')}  {load()}",
                  flush=True)
    print(f"\ngoodput, {args.duration:.0f} s from launch, SIGKILL every {args.kill_every:.0f} s, ballast "
          f"{args.ballast_mb} MB, step_delay {args.step_delay} s, digits on CPU ({os.cpu_count()} cores, shared), "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC")
    print(f"  {'uninterrupted, no saves':25s} final step {base:6d}")
    for name, step in results.items():
        print(f"  {name:25s} final step {step:6d}  goodput {step / base:6.1%}  {notes.get(name, '')}")
    print("first optimizer step after launch:")
    for name, after_s in FIRST_STEP_AFTER.items():
        print(f"  {name:25s} {after_s:5.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
