"""Elastic DDP in the trainer: the attempt's world size and accumulation, and the proof the global batch held.

The daemon passes ``--devices N --accumulate-grad-batches K`` for an elastic job
(``supervision.elastic``): ``N x K`` per-device batches per optimizer step, as configured.
``SamplesPerStep`` counts the samples this rank fed into each optimizer step and keeps
a histogram (samples -> steps) in ``samples.json`` (``samples.rank<N>.json``); the ranks'
sums are the global batch actually trained with, on each side of a resize.

``ElasticResume`` records the world size in every checkpoint and, at a resume at another
size, rescales the epoch's batch counter: Lightning counts this rank's batches, and a rank's
batch covers twice the data at half the ranks. Unscaled, the resized epoch would run longer
(after a shrink) or shorter (after a grow) than what was left of it.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import per_rank_name

SAMPLES_FILE = "samples.json"
STATE_KEY = "ml_supervisor_elastic"  # a checkpoint's world size, as this trainer saved it
COUNTERS = ("ready", "started", "processed", "completed")


def rescale_epoch_progress(checkpoint: dict[str, Any], world_size: int, accumulate: int) -> int | None:
    """Scale a checkpoint's epoch batch counter from the size it was saved at to ``world_size`` (in place).

    The same share of the epoch's data, in this size's batches, rounded down to whole optimizer steps
    (``accumulate``) so the first step after the resume is a whole one; a checkpoint of the epoch's last
    batch stays at the epoch's end (rounded up). The counters keep their offsets from ``ready`` (a save at
    a batch's end has ``completed`` one behind: Lightning adds it back when it restarts). The new ``ready``,
    or None when nothing changes (same size, no record of the size, no counter).
    """
    state = checkpoint.get(STATE_KEY)
    state = state if isinstance(state, dict) else {}
    saved, epoch_batches = state.get("world_size"), state.get("epoch_batches")
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if not isinstance(saved, int) or saved < 1 or saved == world_size or not isinstance(progress, dict):
        return None
    current = progress.get("current")
    if not isinstance(current, dict) or not all(isinstance(current.get(k), int) for k in COUNTERS):
        return None
    ready = current["ready"]
    if isinstance(epoch_batches, int) and ready >= epoch_batches:
        done = -(-ready * saved // world_size)  # the epoch was over: over at this size too
    else:
        done = ready * saved // world_size // accumulate * accumulate
    for key in COUNTERS:
        current[key] = max(0, done - (ready - current[key]))
    return done


def with_world_size(trainer_args: dict[str, Any], devices: int | None, accumulate: int | None) -> dict[str, Any]:
    """``trainer_args`` at this attempt's world size and accumulation (as configured when not given)."""
    args = dict(trainer_args)
    if devices is not None:
        args["devices"] = devices
    if accumulate is not None:
        args["accumulate_grad_batches"] = accumulate
    return args


def batch_samples(batch: Any) -> int:
    """Samples in a batch: the leading size of its first tensor (a tensor, or a tuple / list / dict of them)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, (list, tuple)) and batch:
        return batch_samples(batch[0])
    if isinstance(batch, dict) and batch:
        return batch_samples(next(iter(batch.values())))
    return 0


class ElasticResume(Callback):
    """Save the world size with each checkpoint; at a resume at another size, rescale the epoch's position."""

    def __init__(self, world_size: int, accumulate: int) -> None:
        self._world_size = world_size
        self._accumulate = accumulate

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        batches = trainer.num_training_batches
        checkpoint[STATE_KEY] = {"world_size": self._world_size, "accumulate_grad_batches": self._accumulate,
                                 "epoch_batches": int(batches) if batches != float("inf") else None}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # Callbacks are restored before the loops (Lightning's checkpoint connector): the loops read the result.
        saved = checkpoint.get(STATE_KEY) or {}
        ready = rescale_epoch_progress(checkpoint, self._world_size, self._accumulate)
        if ready is not None and trainer.global_rank == 0:
            print(f"[trainer] resuming at {self._world_size} ranks from a checkpoint of {saved.get('world_size')}: "
                  f"the epoch's position is {ready} batches of this size", file=sys.stderr, flush=True)


class SamplesPerStep(Callback):
    """This rank's samples per optimizer step, as a histogram in the attempt dir (written as it changes)."""

    def __init__(self, attempt_dir: Path, rank: int, world_size: int, accumulate: int) -> None:
        self._path = attempt_dir / per_rank_name(SAMPLES_FILE, rank)
        self._facts = {"rank": rank, "world_size": world_size, "accumulate_grad_batches": accumulate}
        self._pending = 0
        self._steps: Counter[int] = Counter()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._pending += batch_samples(batch)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # Once per optimizer step, after the last accumulated batch's backward: the step's samples are all in.
        new = self._pending not in self._steps
        self._steps[self._pending] += 1
        self._pending = 0
        if new or sum(self._steps.values()) % 10 == 0:
            self._write()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._write()  # a graceful stop (the resize's) ends the fit this way

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._write()

    def _write(self) -> None:
        histogram = {str(k): v for k, v in sorted(self._steps.items())}
        write_json_atomic(self._path, {**self._facts, "samples_per_step": histogram}, durable=False)
