"""The Lightning side of the heartbeat: feeds ``HeartbeatWriter`` from trainer hooks."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from torch import Tensor

from supervisor.jobfiles.atomic import finite_or_none
from trainer.progress import HeartbeatWriter


class HeartbeatCallback(Callback):
    """Reports phase changes at once and training progress at most every ``writer.interval`` seconds.

    Phases: ``setup`` until the first train batch ends, ``train``, ``validate``
    (the sanity check counts), ``checkpoint`` (set by ``ManifestCheckpoint``)
    and ``done`` when training ends. Metrics are read from
    ``trainer.callback_metrics`` only when a beat is written.
    """

    def __init__(self, writer: HeartbeatWriter) -> None:
        super().__init__()
        self.writer = writer
        self._trainer: pl.Trainer | None = None
        self._has_trained = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self.writer.read_metrics = self._read_metrics

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The step restored from a checkpoint, before the first new step is taken.
        self.writer.set_phase(self.writer.phase, step=trainer.global_step, epoch=trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Per step: keep this to attribute reads and the writer's clock check.
        self._has_trained = True
        self.writer.step_done(trainer.global_step, trainer.current_epoch)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.writer.set_phase("validate", step=trainer.global_step, epoch=trainer.current_epoch)

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
        self.writer.set_phase("done", step=trainer.global_step, epoch=trainer.current_epoch)

    def _read_metrics(self) -> dict[str, float]:
        """The last logged scalar metrics as finite floats (called only when a beat is written)."""
        if self._trainer is None:
            return {}
        out: dict[str, float] = {}
        for name, value in self._trainer.callback_metrics.items():
            if isinstance(value, Tensor):
                if value.numel() != 1:
                    continue
                value = value.item()
            number = finite_or_none(value)
            if number is not None:
                out[str(name)] = number
        return out
