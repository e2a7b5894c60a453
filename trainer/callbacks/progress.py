"""``ProgressCallback``: the heartbeat, fed from trainer hooks, and the ``--deadline`` stop.

One callback for both on purpose: Lightning calls every hook of every callback
on every step (about 4 µs each), so each extra callback costs step time even
where it overrides nothing.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from supervisor.jobfiles.atomic import finite_or_none
from trainer.callbacks.compute_timer import ComputeTimer
from trainer.callbacks.divergence import LossGuard
from trainer.deadline import Deadline
from trainer.progress import HeartbeatWriter


class ProgressCallback(Callback):
    """Reports progress through ``writer`` and stops the fit for ``deadline`` (if any).

    Heartbeat phases: ``setup`` until the first train batch ends, ``train``,
    ``validate`` (the sanity check counts), ``checkpoint`` (set by
    ``ManifestCheckpoint``) and ``done`` when training ends; phase changes are
    written at once, steps at most every ``writer.interval`` seconds. Metrics
    and the step are read from the trainer only when a beat is written.

    The deadline is checked at train start, at every train batch end and at
    epoch end; when due, ``trainer.should_stop`` ends the fit the way
    ``max_steps`` does (``on_train_end`` runs, so the final state is saved).
    """

    def __init__(self, writer: HeartbeatWriter, deadline: Deadline | None = None,
                 guard: LossGuard | None = None) -> None:
        super().__init__()
        self.writer = writer
        self.deadline = deadline
        self.guard = guard  # the divergence check (trainer/callbacks/divergence.py), on the same hooks
        self._compute = ComputeTimer()  # each step's forward, for the daemon's straggler scores
        self._trainer: pl.Trainer | None = None
        self._has_trained = False
        self._multi_process = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._multi_process = trainer.world_size > 1
        self.writer.read_metrics = self._read_metrics
        self.writer.read_progress = self._read_progress

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.writer.mark("checkpoint_loaded")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.mark("train_start")
        self.writer.set_phase(self.writer.phase)  # the step restored from a checkpoint, at once
        self._check_deadline(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._compute.start(pl_module)
        if self.guard is not None:
            self.guard.batch_start(trainer)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        seconds = self._compute.stop()
        if seconds is not None:
            self.writer.compute_done(seconds)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Per step: keep this to the loss check, the writer's clock check and one for the deadline.
        if self.guard is not None:
            self.guard.batch_end(trainer, pl_module, outputs, self._multi_process)
        self._has_trained = True
        self.writer.step_done()
        if self.deadline is not None:
            self._check_deadline(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_deadline(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.set_phase("validate")

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # A long validation still shows progress (and a hung one stops the beat).
        self.writer.tick()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.set_phase("train" if self._has_trained else "setup")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.set_phase("done")

    def _check_deadline(self, trainer: pl.Trainer) -> None:
        if self.deadline is None:
            return
        due = self.deadline.due()
        if self._multi_process:
            # Ranks must agree, or those that stop leave the others waiting in a collective.
            due = trainer.strategy.broadcast(due)
        if due:
            self.deadline.triggered = True
            trainer.should_stop = True

    def _read_progress(self) -> tuple[int, int]:
        if self._trainer is None:
            return self.writer.step, self.writer.epoch
        return int(self._trainer.global_step), int(self._trainer.current_epoch)

    def _read_metrics(self) -> dict[str, float]:
        """The last logged scalar metrics as finite floats (called only when a beat is written)."""
        if self._trainer is None:
            return {}
        out: dict[str, float] = {}
        for name, metric in self._trainer.callback_metrics.items():
            value: object = metric
            if isinstance(metric, Tensor):
                if metric.numel() != 1:
                    continue
                value = metric.item()
            number = finite_or_none(value)
            if number is not None:
                out[str(name)] = number
        return out
