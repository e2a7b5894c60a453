"""Stop a fit before the job's time budget ends (``--deadline``).

Not Lightning's ``Timer`` (``Trainer(max_time=...)``): the Timer restores the
training time elapsed so far from a resumed checkpoint, so a limit computed
from the wall-clock deadline would count earlier attempts twice. The deadline
is an absolute wall-clock time, which needs no state at all.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from trainer.deadline import stop_time

__all__ = ["DeadlineStop", "stop_time"]


class DeadlineStop(Callback):
    """Sets ``trainer.should_stop`` at the first train batch end after ``stop_at`` (unix time).

    Lightning then ends the fit as for ``max_steps`` (``on_train_end`` runs, so the
    final state is saved). ``triggered`` tells the exit record the reason.
    """

    def __init__(self, stop_at: float) -> None:
        super().__init__()
        self.stop_at = stop_at
        self.triggered = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._check(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        due = time.time() >= self.stop_at
        if trainer.world_size > 1:
            # Ranks must agree or the ones that stop leave the others waiting in a collective.
            due = trainer.strategy.broadcast(due)
        if due:
            self.triggered = True
            trainer.should_stop = True
