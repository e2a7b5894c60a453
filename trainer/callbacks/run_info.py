"""Tell the W&B run which attempt is writing to it."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from trainer.wandb_run import record_attempt


class WandbAttemptInfo(Callback):
    """At train start (after a resume restored the step), records attempt and restarts in the run."""

    def __init__(self, logger: Any, cfg: DictConfig, *, attempt: int, restarts: int) -> None:
        super().__init__()
        self.logger = logger
        self.cfg = cfg
        self.attempt = attempt
        self.restarts = restarts

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            record_attempt(self.logger, self.cfg, attempt=self.attempt, restarts=self.restarts,
                           step=trainer.global_step)
