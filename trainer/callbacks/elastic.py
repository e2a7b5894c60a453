"""Elastic DDP in the trainer: the attempt's world size and accumulation, and the proof the global batch held.

The daemon passes ``--devices N --accumulate-grad-batches K`` for an elastic job
(``supervision.elastic``): ``N x K`` per-device batches per optimizer step, as configured.
``SamplesPerStep`` counts the samples this rank fed into each optimizer step and keeps
a histogram (samples -> steps) in ``samples.json`` (``samples.rank<N>.json``); the ranks'
sums are the global batch actually trained with, on each side of a resize.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import per_rank_name

SAMPLES_FILE = "samples.json"


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
