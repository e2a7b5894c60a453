"""Test-only variants of the digits example that misbehave on purpose.

The supervisor's end-to-end tests use them to produce real hangs, crashes and
slow saves inside a real Lightning fit:

    model:
      class_path: trainer.examples.faulty.FaultyDigitsClassifier
      init_args: {hang_at_step: 30}          # blocks forever in training_step at global step 30
      # or {crash_at_step: 30}               # raises RuntimeError there
      # or {nan_at_step: 30}                 # the loss is NaN there (the supervisor rolls back)
      # or {nan_val_at_epoch: 1}             # val_loss is NaN in that epoch's validation
      # record_batches: true                 # append each trained batch to <attempt dir>/batches.jsonl
      # fault_on_attempt: 1 (default)        # only attempt 1 misbehaves; the relaunch completes
      # fault_on_rank: 1                     # only that global rank misbehaves (default: every rank)
      # step_delay: 0.05                     # seconds of sleep per step (slow the fit down)
      # delay_on_attempt: 1                  # ... on that attempt only (default: every attempt)
      # delay_on_rank: 1                     # ... on that global rank only (a straggler; default: every rank)
      # ballast_mb: 200                      # a big saved buffer, so checkpoint saves take time

The attempt number comes from ``ML_SUPERVISOR_ATTEMPT``, which ``python -m
trainer`` sets from ``--attempt``. Not a model to copy.
"""

from __future__ import annotations

import json
import os
import time

import torch
from torch import Tensor

from trainer.examples.digits import DigitsClassifier

ATTEMPT_ENV = "ML_SUPERVISOR_ATTEMPT"


class InjectedFault(RuntimeError):
    """The error ``crash_at_step`` raises (a distinct type, so tests can recognise it)."""


class FaultyDigitsClassifier(DigitsClassifier):
    """``DigitsClassifier`` that can hang, crash, run slowly or carry dead weight.

    ``fault_on_attempt``: the attempt that hangs or crashes (``None``: every
    attempt); ``fault_on_rank``: the global rank that does (``None``: every
    rank). ``step_delay`` applies on ``delay_on_attempt`` (``None``: every
    attempt, the default): a first attempt slow enough to be killed mid-run, and
    a relaunch that finishes at full speed. ``ballast_mb`` applies to every attempt.
    """

    def __init__(
        self,
        hang_at_step: int | None = None,
        crash_at_step: int | None = None,
        fault_on_attempt: int | None = 1,
        fault_on_rank: int | None = None,
        step_delay: float = 0.0,
        delay_on_attempt: int | None = None,
        delay_on_rank: int | None = None,
        ballast_mb: int = 0,
        nan_at_step: int | None = None,
        nan_val_at_epoch: int | None = None,
        record_batches: bool = False,
        **digits_args: float,
    ) -> None:
        super().__init__(**digits_args)  # type: ignore[arg-type]
        self.hang_at_step = hang_at_step
        self.crash_at_step = crash_at_step
        self.fault_on_attempt = fault_on_attempt
        self.fault_on_rank = fault_on_rank
        self.step_delay = step_delay
        self.delay_on_attempt = delay_on_attempt
        self.delay_on_rank = delay_on_rank
        self.nan_at_step = nan_at_step
        self.nan_val_at_epoch = nan_val_at_epoch
        self.record_batches = record_batches
        if ballast_mb > 0:
            # A saved buffer, not a parameter: it makes every checkpoint ballast_mb bigger
            # (and its save slower) without adding optimizer state or compute.
            self.register_buffer("ballast", torch.zeros(ballast_mb * 1024 * 1024 // 4, dtype=torch.float32))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """The digits step, after the configured fault (if this is the step and the attempt)."""
        if self.step_delay > 0 and self.delay_on_attempt in (None, _attempt()) \
                and self.delay_on_rank in (None, self.global_rank):
            time.sleep(self.step_delay)
        if self._faulty_attempt():
            if self.hang_at_step is not None and self.global_step == self.hang_at_step:
                _block_forever()
            if self.crash_at_step is not None and self.global_step == self.crash_at_step:
                raise InjectedFault(f"injected crash at global step {self.global_step}")
        if self.record_batches:
            _record_batch(self.global_step, batch_idx, batch[1])
        loss = super().training_step(batch, batch_idx)
        if self.nan_at_step is not None and self.global_step == self.nan_at_step and self._faulty_attempt():
            return loss * float("nan")  # as a bad batch or an overflow would: the run lives on, diverged
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """The digits validation, with a NaN ``val_loss`` in the configured epoch."""
        if self.nan_val_at_epoch is None or self.current_epoch != self.nan_val_at_epoch \
                or not self._faulty_attempt():
            super().validation_step(batch, batch_idx)
            return
        images, labels = batch
        loss = self.loss_fn(self(images), labels) * float("nan")  # (B, 10) logits -> NaN scalar
        self.log("val_loss", loss, prog_bar=True)

    def _faulty_attempt(self) -> bool:
        if self.fault_on_rank is not None and self.global_rank != self.fault_on_rank:
            return False
        if self.fault_on_attempt is None:
            return True
        return _attempt() == self.fault_on_attempt


def _attempt() -> int:
    """This process's attempt number (a promoted standby's environment has its new one)."""
    return int(os.environ.get(ATTEMPT_ENV, "1"))


class HangingDigitsClassifier(FaultyDigitsClassifier):
    """Blocks forever in ``training_step`` at ``hang_at_step`` (on ``fault_on_attempt``)."""

    def __init__(self, hang_at_step: int = 30, **kwargs: float) -> None:
        super().__init__(hang_at_step=hang_at_step, **kwargs)  # type: ignore[arg-type]


class CrashingDigitsClassifier(FaultyDigitsClassifier):
    """Raises ``InjectedFault`` in ``training_step`` at ``crash_at_step`` (on ``fault_on_attempt``)."""

    def __init__(self, crash_at_step: int = 30, **kwargs: float) -> None:
        super().__init__(crash_at_step=crash_at_step, **kwargs)  # type: ignore[arg-type]


def _record_batch(step: int, batch_idx: int, targets: Tensor) -> None:
    """One line per trained batch: which step, which batch of the epoch, its labels (to tell batches apart)."""
    path = os.path.join(os.environ.get("ML_SUPERVISOR_ATTEMPT_DIR", "."), "batches.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "batch_idx": batch_idx, "targets": targets.tolist()[:8],
                            "time": time.time()}) + "\n")


def _block_forever() -> None:
    """Hang the way a deadlocked collective does: no progress, the process stays alive.

    A sleep loop keeps Python signal handlers running (SIGTERM is still seen),
    so only the supervisor's hang detection and SIGKILL end it.
    """
    while True:
        time.sleep(3600)
