"""``LossGuard``: stop the fit at the first diverging loss; ``RollbackActions``: what a rollback attempt changes.

The guard reads the loss each training step returned (rank-aware: with several
ranks one collective per step makes any rank's bad value every rank's, so all
stop at the same step) and raises ``Diverged`` before the checkpoint callback
runs (Lightning orders checkpoint callbacks last), so no bad weights are saved.
The rollback attempt (``--skip-batches``, ``--lr-scale``, from the daemon) drops
the next batches (PaLM's recipe for data-caused spikes) and scales the learning
rates once, and records what it did in ``rollback.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import ROLLBACK_FILE
from trainer.divergence import OTHER_RANK, Diverged, Divergence, SpikeDetector


def step_loss(outputs: Any) -> torch.Tensor | None:
    """The loss a training step returned (a tensor, or a dict's ``loss``); None when it returned none."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    return loss if isinstance(loss, torch.Tensor) and loss.numel() == 1 else None


class LossGuard:
    """Raises ``Diverged`` at the first non-finite loss or confirmed spike (see the module docstring).

    Not a callback of its own: ``ProgressCallback`` calls it from the hooks it already has, since
    Lightning dispatches every hook to every callback on every step (a few µs each).
    """

    def __init__(self, detector: SpikeDetector) -> None:
        self.detector = detector
        self._step = 0  # the global step when the batch started: its weights produced the loss

    def batch_start(self, trainer: pl.Trainer) -> None:
        self._step = trainer.global_step

    def batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, multi: bool) -> None:
        """After a training step (before the checkpoint callback, which Lightning runs last)."""
        loss = step_loss(outputs)
        verdict = None
        if loss is not None:
            verdict = self.detector.update(self._step, float(loss.detach()), rank=trainer.global_rank)
        if multi:
            verdict = self._agree(trainer, pl_module, verdict)
        if verdict is not None:
            raise Diverged(verdict)

    def _agree(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
               verdict: Divergence | None) -> Divergence | None:
        """Every rank learns whether any rank diverged (the lowest such rank is named)."""
        mine = float(trainer.global_rank) if verdict is not None else math.inf
        flag = torch.tensor([mine], device=pl_module.device)
        lowest = float(trainer.strategy.reduce(flag, reduce_op="min").item())
        if math.isinf(lowest):
            return None
        if verdict is not None and int(lowest) == trainer.global_rank:
            return verdict
        return verdict if verdict is not None else Divergence(step=self._step, check=OTHER_RANK, rank=int(lowest))


class RollbackActions(Callback):
    """Drops the first ``skip_batches`` training batches of this attempt and scales its learning rates once."""

    def __init__(self, attempt_dir: Path, *, skip_batches: int, lr_scale: float, resumed_step: int | None) -> None:
        super().__init__()
        self.path = attempt_dir / ROLLBACK_FILE
        self.skip_batches = skip_batches
        self.lr_scale = lr_scale
        self.record: dict[str, Any] = {"skip_batches": skip_batches, "lr_scale": lr_scale,
                                       "resumed_step": resumed_step, "skipped": [], "lrs": []}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the checkpoint's optimizer state is restored: the scale applies to the restored rates.
        if self.lr_scale != 1.0:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] *= self.lr_scale
                    self.record["lrs"].append(group["lr"])
            for config in trainer.lr_scheduler_configs:  # a scheduler recomputes the rate from its base_lrs
                base_lrs = getattr(config.scheduler, "base_lrs", None)
                if isinstance(base_lrs, list):
                    config.scheduler.base_lrs = [lr * self.lr_scale for lr in base_lrs]
        if self.skip_batches > 0:
            self._skip_next(pl_module)
        self._write(trainer)

    def _skip_next(self, pl_module: pl.LightningModule) -> None:
        """Until ``skip_batches`` batches went by, ``training_step`` returns None: Lightning skips the step."""
        original = pl_module.training_step
        skipped: list[int] = self.record["skipped"]

        def training_step(batch: Any, batch_idx: int, *args: Any, **kwargs: Any) -> Any:
            if len(skipped) < self.skip_batches:
                skipped.append(batch_idx)
                return None
            del pl_module.training_step  # back to the class's own method
            return original(batch, batch_idx, *args, **kwargs)

        pl_module.training_step = training_step  # type: ignore[method-assign]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.skip_batches and "skip_done_at_step" not in self.record \
                and len(self.record["skipped"]) >= self.skip_batches:
            self.record["skip_done_at_step"] = trainer.global_step
            self._write(trainer)

    def _write(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero:
            write_json_atomic(self.path, {**self.record, "time": time.time()}, durable=False)
