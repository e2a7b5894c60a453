"""What the trainer's added callbacks cost per training step (goal: at most 1 %).

Fits the digits example repeatedly in this process, alternating two arms so
machine noise hits both alike:

    baseline   Lightning's plain ModelCheckpoint with the same schedule, no heartbeat
    supervised ManifestCheckpoint + ProgressCallback (heartbeat, and a deadline a day
               away) + the divergence guard (the loss read each step), as ``python -m trainer`` adds them

Two measurements, printed with the ratio supervised / baseline:

1. Fit level: a step is the interval between consecutive train-batch ends (data
   loading and every hook included), in wall time and in the main thread's CPU
   time. Per arm: the median and the minimum of the per-fit median step (the
   minimum is the least disturbed estimate on a shared machine), and the mean
   step including checkpoint saves.
2. Hook level: after a fit, the six callback hooks Lightning calls on every
   training step are dispatched to each arm's callbacks in a tight loop; the
   difference is the supervisor's added cost per step in microseconds, set
   against the baseline step. Insensitive to machine noise, it is the figure
   the 1 % goal is checked on when the fit-level numbers are too noisy.

Also printed: the median ratio of back-to-back fit pairs (paired, so slow
drifts of a shared machine cancel).

    .venv/bin/python bench/trainer_overhead.py [--fits 16] [--epochs 2] [--heartbeat-interval 2.0]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.trainer import call

from trainer.callbacks.checkpoint import ManifestCheckpoint
from trainer.callbacks.divergence import LossGuard
from trainer.callbacks.progress import ProgressCallback
from trainer.deadline import Deadline
from trainer.divergence import SpikeDetector
from trainer.examples.digits import DigitsClassifier, DigitsDataModule
from trainer.progress import HeartbeatWriter

CHECKPOINT = {"monitor": "val_loss", "mode": "min", "save_top_k": 3, "save_last": True, "every_n_train_steps": 20}


# The callback hooks Lightning calls once per training step (automatic optimization), with their arguments.
PER_STEP_HOOKS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("on_train_batch_start", (None, 0)),
    ("on_before_zero_grad", (None,)),
    ("on_before_backward", (None,)),
    ("on_after_backward", ()),
    ("on_before_optimizer_step", (None,)),
    ("on_train_batch_end", ({"loss": torch.tensor(0.5)}, None, 0)),  # a step's output: the guard reads its loss
)


@dataclass
class FitTiming:
    wall: list[float] = field(default_factory=list)  # step intervals, seconds
    cpu: list[float] = field(default_factory=list)  # main-thread CPU time of the same intervals
    hook_us: float = 0.0  # per-step hook dispatch, microseconds


class StepTimer(Callback):
    """Records the interval between consecutive train-batch ends (wall and main-thread CPU)."""

    def __init__(self, timing: FitTiming) -> None:
        self.timing = timing
        self._last: tuple[float, float] | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = (time.perf_counter(), time.thread_time())
        if self._last is not None:
            self.timing.wall.append(now[0] - self._last[0])
            self.timing.cpu.append(now[1] - self._last[1])
        self._last = now

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # validation time is not step time


def fit_once(arm: str, workdir: Path, epochs: int, heartbeat_interval: float) -> FitTiming:
    """One fit of the digits example in ``arm``; returns its step timings."""
    workdir.mkdir(parents=True)
    ckpt_dir = workdir / "checkpoints"
    timing = FitTiming()
    callbacks: list[Callback] = [StepTimer(timing)]
    if arm == "baseline":
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, **CHECKPOINT))
    else:
        writer = HeartbeatWriter(workdir / "heartbeat.json", workdir / "metrics.jsonl", attempt=1,
                                 started_at=time.time(), interval=heartbeat_interval)
        callbacks += [
            ProgressCallback(writer, Deadline(time.time() + 86400),
                             LossGuard(SpikeDetector(spike_factor=10.0, patience=5, window=50, warmup_steps=100))),
            ManifestCheckpoint(ckpt_dir, attempt=1, heartbeat=writer, **CHECKPOINT),
        ]
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         default_root_dir=workdir)
    trainer.fit(DigitsClassifier(), datamodule=DigitsDataModule())
    timing.hook_us = per_step_hook_cost(trainer) * 1e6
    return timing


def per_step_hook_cost(trainer: pl.Trainer, loops: int = 5000, repeats: int = 5) -> float:
    """Seconds to dispatch one step's callback hooks to ``trainer``'s callbacks (best of ``repeats``).

    The timer callback itself is left out; the fit is over, so no save is due.
    """
    trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, StepTimer)]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            for hook, args in PER_STEP_HOOKS:
                call._call_callback_hooks(trainer, hook, *args)
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=16, help="fits per arm (alternating)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per fit (23 steps each)")
    parser.add_argument("--heartbeat-interval", type=float, default=2.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # steadier timings; both arms alike

    results: dict[str, list[FitTiming]] = {"baseline": [], "supervised": []}
    with tempfile.TemporaryDirectory() as tmp:
        fit_once("baseline", Path(tmp) / "warmup", 1, args.heartbeat_interval)  # imports, allocator, caches
        for i in range(args.fits):
            order = ("baseline", "supervised") if i % 2 == 0 else ("supervised", "baseline")
            for arm in order:
                results[arm].append(fit_once(arm, Path(tmp) / f"{arm}-{i}", args.epochs, args.heartbeat_interval))

    print(f"digits example on CPU, {args.fits} fits per arm x {args.epochs} epochs (23 steps each), "
          f"heartbeat every {args.heartbeat_interval:g} s, torch threads 1")
    rows = {}
    for arm, fits in results.items():
        wall = [statistics.median(f.wall) for f in fits]
        cpu = [statistics.median(f.cpu) for f in fits]
        rows[arm] = {
            "median wall": statistics.median(wall),
            "min wall": min(wall),
            "median cpu": statistics.median(cpu),
            "min cpu": min(cpu),
            "mean wall (with saves)": statistics.median(statistics.fmean(f.wall) for f in fits),
            "hooks us": statistics.median(f.hook_us for f in fits),
        }
    print(f"  {'step time (ms)':<24}{'baseline':>10}{'supervised':>12}{'ratio':>8}")
    for key in ("median wall", "min wall", "median cpu", "min cpu", "mean wall (with saves)"):
        base, sup = rows["baseline"][key], rows["supervised"][key]
        print(f"  {key:<24}{base * 1e3:>10.3f}{sup * 1e3:>12.3f}{sup / base:>8.3f}")
    pairs = [statistics.median(s.cpu) / statistics.median(b.cpu)
             for b, s in zip(results["baseline"], results["supervised"], strict=True)]
    print(f"  paired (back-to-back fits) median CPU step ratio: {statistics.median(pairs):.3f} "
          f"(quartiles {statistics.quantiles(pairs, n=4)[0]:.3f} .. {statistics.quantiles(pairs, n=4)[2]:.3f})")
    base_hooks, sup_hooks = rows["baseline"]["hooks us"], rows["supervised"]["hooks us"]
    added = sup_hooks - base_hooks
    step = rows["baseline"]["min wall"]
    print(f"  per-step hook dispatch: baseline {base_hooks:.1f} us, supervised {sup_hooks:.1f} us, "
          f"added {added:.1f} us = {added / (step * 1e6) * 100:.2f} % of a {step * 1e3:.3f} ms step (goal <= 1 %)")


if __name__ == "__main__":
    main()
