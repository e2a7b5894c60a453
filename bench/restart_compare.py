"""Crash -> first optimizer step of the successor, side by side: plain loop, torchrun, ml-supervisor.

Same model (the digits classifier, ``step_delay`` per step), same data, same
checkpoint cadence (every ``--every`` steps, ``last.ckpt`` kept, resume from it)
for every contender:

    (a) loop        ``until python train.py; do :; done`` resuming from last.ckpt
    (b) torchrun    ``torchrun --standalone --nproc-per-node=1 --max-restarts=N train.py``
    (c) sup cold    ml-supervisor, ``supervision.standby: off`` (``resume_from: last``)
    (d) sup standby ml-supervisor, ``supervision.standby: on``

Two faults each: a SIGKILL of the trainer (time from the kill) and a Python
exception raised in a callback (time from the raise). The time ends when the
successor process finishes its first optimizer step (a callback in every
contender stamps it). Contenders alternate (rounds, order rotated each round);
the medians and the ratio to (a) are printed.

    .venv/bin/python bench/restart_compare.py [--rounds 2] [--only "sup standby"] [--kind exception]
"""

from __future__ import annotations

import argparse
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

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.harness import REPO, DaemonProc, real_env, wait_for

WAIT_S = 300.0

USER_MODULE = '''
"""The bench's user callback: stamps each process's first optimizer step; raises when asked."""
import os
import time

import pytorch_lightning as pl


class Stamp(pl.Callback):
    def __init__(self) -> None:
        self.first = True

    def on_train_batch_end(self, trainer, *args) -> None:
        stamps = os.environ["BENCH_STAMPS"]
        # the global step reached (bench/goodput.py reads it): replaced whole, never seen half-written
        with open(stamps + ".step.tmp", "w") as f:
            f.write(str(trainer.global_step))
        os.replace(stamps + ".step.tmp", stamps + ".step")
        if self.first:
            self.first = False
            with open(stamps, "a") as f:
                f.write(f"step {time.time()} {os.getpid()}\\n")
        flag = os.environ["BENCH_CRASH_FLAG"]
        if os.path.exists(flag):
            os.unlink(flag)
            with open(stamps, "a") as f:
                f.write(f"crash {time.time()} {os.getpid()}\\n")
            raise RuntimeError("bench: injected exception")
'''

TRAIN_SCRIPT = '''
"""The plain user script: the same model, data and checkpoint cadence, resuming from last.ckpt."""
import os
import sys

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from benchuser import Stamp
from trainer.examples.digits import DigitsDataModule
from trainer.examples.faulty import FaultyDigitsClassifier

ckdir, every, delay, accelerator = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
pl.seed_everything(0, verbose=False)
model = FaultyDigitsClassifier(step_delay=delay, hidden_size=128, dropout=0.1, lr=0.003, weight_decay=0.0001)
data = DigitsDataModule(batch_size=64, val_fraction=0.2, num_workers=0, seed=0)
last = os.path.join(ckdir, "last.ckpt")
trainer = pl.Trainer(accelerator=accelerator, devices=1, max_epochs=100000, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, log_every_n_steps=5,
                     callbacks=[ModelCheckpoint(dirpath=ckdir, every_n_train_steps=every, save_last=True), Stamp()])
trainer.fit(model, datamodule=data, ckpt_path=last if os.path.exists(last) else None)
'''


def read_stamps(path: Path) -> list[tuple[str, float, int]]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        kind, t, pid = line.split()
        out.append((kind, float(t), int(pid)))
    return out


def step_stamps(path: Path) -> list[tuple[str, float, int]]:
    """The "step" stamps: one per trainer process, at its first optimizer step (time, pid)."""
    return [s for s in read_stamps(path) if s[0] == "step"]


def global_step(path: Path) -> int:
    """The global step the trainer last reported (the Stamp callback's ``.step`` file; 0 before any)."""
    try:
        return int(Path(str(path) + ".step").read_text())
    except FileNotFoundError:
        return 0


class Contender:
    """One way of running the training: start it, kill it, wait for its successor, stop it."""

    name = ""

    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root = root / self.name.replace(" ", "-")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.args = args
        self.stamps = self.root / "stamps.txt"
        self.flag = self.root / "crash.flag"
        (self.root / "benchuser.py").write_text(USER_MODULE)
        self.env = dict(os.environ, BENCH_STAMPS=str(self.stamps), BENCH_CRASH_FLAG=str(self.flag),
                        PYTHONPATH=os.pathsep.join([str(self.root), str(REPO)]),
                        CUDA_VISIBLE_DEVICES="0" if args.accelerator == "gpu" else "")

    def prepare(self) -> None:
        """What is up before the user starts a run (ml-supervisor's daemon, a service); not timed."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def ready_for_fault(self) -> None:
        """Wait until a fault now is a fair test: the trainer steps and has saved ``last.ckpt`` since.

        (Without a checkpoint of its own an attempt counts as no progress, and the
        supervisor would rightly back off before the next restart.)
        """
        stamps = wait_for(lambda: step_stamps(self.stamps) or None, timeout=WAIT_S,
                          interval=0.05, what=f"{self.name}: first step")
        self.pid, first = stamps[-1][2], stamps[-1][1]
        wait_for(lambda: any(p.stat().st_mtime > first for p in self.root.rglob("last.ckpt")), timeout=WAIT_S,
                 interval=0.1, what=f"{self.name}: a checkpoint after the first step")
        time.sleep(max(0.0, first + self.args.settle - time.time()))

    def fault(self, kind: str) -> float:
        """Inject one fault; seconds from the fault to the successor's first optimizer step."""
        self.ready_for_fault()
        before = len(read_stamps(self.stamps))
        if kind == "sigkill":
            t0 = time.time()
            os.kill(self.pid, signal.SIGKILL)
        else:
            self.flag.touch()
            crash = wait_for(lambda: next((s for s in read_stamps(self.stamps)[before:] if s[0] == "crash"), None),
                             timeout=WAIT_S, interval=0.01, what=f"{self.name}: the exception")
            t0 = crash[1]
        nxt = wait_for(lambda: next((s for s in read_stamps(self.stamps)[before:]
                                     if s[0] == "step" and s[2] != self.pid), None),
                       timeout=WAIT_S, interval=0.01, what=f"{self.name}: the successor's first step")
        return nxt[1] - t0


class PlainLoop(Contender):
    name = "loop"

    def command(self) -> list[str]:
        script = self.root / "train.py"
        script.write_text(TRAIN_SCRIPT)
        a = self.args
        return ["bash", "-c", f"until {sys.executable} {script} {self.root / 'ckpt'} {a.every} {a.step_delay} "
                              f"{a.accelerator}; do :; done"]

    def start(self) -> None:
        with open(self.root / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(self.command(), cwd=self.root, env=self.env, start_new_session=True,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def stop(self) -> None:
        # torchrun's workers are not in its process group: kill the whole tree
        try:
            tree = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        for proc in tree:
            try:
                proc.kill()
            except psutil.Error:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


class Torchrun(PlainLoop):
    name = "torchrun"

    def command(self) -> list[str]:
        script = self.root / "train.py"
        script.write_text(TRAIN_SCRIPT)
        a = self.args
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        return [torchrun, "--standalone", "--nproc-per-node=1", "--max-restarts=100", str(script),
                str(self.root / "ckpt"), str(a.every), str(a.step_delay), a.accelerator]


class Supervised(Contender):
    standby = "off"
    resume_from = "last"
    name = "sup cold"

    def prepare(self) -> None:
        state = self.root / "state"
        self.daemon = DaemonProc(state, self.root, real_env(state))
        self.daemon.env["PYTHONPATH"] = os.pathsep.join([str(self.root), str(REPO)])
        self.daemon.start("hang.startup_allowance=300")

    def start(self) -> None:
        cfg: dict[str, Any] = yaml.safe_load((REPO / "configs" / "digits.yaml").read_text())
        cfg["workdir"] = str(self.root)
        cfg["model"]["class_path"] = "trainer.examples.faulty.FaultyDigitsClassifier"
        cfg["model"]["init_args"]["step_delay"] = self.args.step_delay
        cfg["trainer"]["max_epochs"] = 100000
        cfg["trainer"]["accelerator"] = self.args.accelerator
        cfg["trainer"]["devices"] = 1
        # "best" needs a score to rank by: val_loss (one validation per epoch of 23 steps)
        cfg["checkpoint"] = {"monitor": "val_loss" if self.resume_from == "best" else None, "save_top_k": 1,
                             "save_last": True, "every_n_train_steps": self.args.every}
        wandb_mode = getattr(self.args, "wandb", "disabled")
        cfg["logger"] = {"wandb": {"mode": wandb_mode, "run_id": "benchrun" if wandb_mode != "disabled" else None}}
        cfg["callbacks"]["extra"] = [{"class_path": "benchuser.Stamp"}]
        cfg["env"] = {"BENCH_STAMPS": str(self.stamps), "BENCH_CRASH_FLAG": str(self.flag)}
        cfg["supervision"] = {"resume_from": self.resume_from, "standby": self.standby, "max_restarts": 1000,
                              "budget": None, "gpus": 1 if self.args.accelerator == "gpu" else 0}
        self.configure(cfg)
        config = self.root / "job.yaml"
        config.write_text(yaml.safe_dump(cfg))
        self.job = self.daemon.submit(config)

    def configure(self, cfg: dict[str, Any]) -> None:
        """A subclass's changes to the job config (bench/goodput_cadence.py: the save interval, async saves)."""

    def ready_for_fault(self) -> None:
        super().ready_for_fault()
        if self.standby == "on":
            wait_for(lambda: (s := self.daemon.status(self.job)["standby"]) and s["state"] == "ready",
                     timeout=WAIT_S, interval=0.1, what="a ready standby")

    def stop(self) -> None:
        self.daemon.ctl("stop", self.job, check=False)
        self.daemon.kill(signal.SIGTERM)
        self.daemon.kill_leftovers()


class SupervisedStandby(Supervised):
    standby = "on"
    name = "sup standby"


CONTENDERS: list[Callable[[Path, argparse.Namespace], Contender]] = [PlainLoop, Torchrun, Supervised,
                                                                      SupervisedStandby]
FAULTS = ("sigkill", "exception")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs every contender once")
    parser.add_argument("--faults", type=int, default=1, help="faults of each kind per contender and round")
    parser.add_argument("--every", type=int, default=10, help="checkpoint every N steps (all contenders)")
    parser.add_argument("--step-delay", type=float, default=0.02, help="seconds added to each training step")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of training before each fault")
    parser.add_argument("--only", action="append", choices=[c.name for c in CONTENDERS],  # type: ignore[attr-defined]
                        help="run only this contender (repeatable; default: all four)")
    parser.add_argument("--kind", action="append", choices=FAULTS, help="only this fault (repeatable; default: both)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu",
                        help="gpu: every contender trains on one GPU (the loop and torchrun on GPU 0, ml-supervisor "
                             "on the one NVML gives it; bench/gpu/check.sh runs this on a GPU node)")
    parser.add_argument("--wandb", choices=("disabled", "offline"), default="disabled",
                        help="W&B for ml-supervisor's contenders (the plain script logs nothing either way)")
    args = parser.parse_args()
    contenders = [c for c in CONTENDERS if not args.only or c.name in args.only]  # type: ignore[attr-defined]
    kinds = tuple(args.kind or FAULTS)
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as tmp:
        for r in range(args.rounds):
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            for make in order:
                contender = make(Path(tmp), args)
                contender.prepare()
                contender.start()
                try:
                    for _ in range(args.faults):
                        for kind in kinds:
                            seconds = contender.fault(kind)
                            times.setdefault((contender.name, kind), []).append(seconds)
                            print(f"round {r + 1}: {contender.name:12s} {kind:9s} {seconds:6.2f} s", flush=True)
                finally:
                    contender.stop()
    print(f"\nfault -> first optimizer step of the successor, digits on {args.accelerator.upper()} "
          f"({os.cpu_count()} cores), "
          f"checkpoint every {args.every} steps, step_delay {args.step_delay} s, {args.rounds} round(s)")
    print(f"load average at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())} (1 / 5 / 15 min)")
    for kind in kinds:
        base = statistics.median(times[("loop", kind)]) if ("loop", kind) in times else None
        for make in contenders:
            name = make.name  # type: ignore[attr-defined]
            values = times[(name, kind)]
            med = statistics.median(values)
            ratio = f"({med / base:4.2f}x the loop)" if base else "(the loop not run)"
            print(f"  {kind:9s} {name:12s} median {med:6.2f} s  {ratio}  "
                  f"runs: {', '.join(f'{v:.2f}' for v in values)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
