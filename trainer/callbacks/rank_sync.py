"""``RankAgreement``: every rank of a multi-rank fit acts on a stop or save request at the same step.

A signal reaches the ranks at different moments (or only rank 0), and a rank
that stops or saves alone enters a collective the others never join (a 30 min
hang); Lightning's own SIGTERM handling does not prevent that on 2.4-2.6. So in
a multi-rank fit our handler only records, and after every train batch one
all-reduce (MAX) of ``[stop, save]`` decides for all ranks: an agreed stop sets
Lightning's ``received_sigterm`` everywhere at the same step (``ManifestCheckpoint``
then saves once, collectively), an agreed save becomes ``SignalState.agreed_save``.
Any other exception (a dead peer) calls ``on_failure`` first, so the rank's exit
record precedes Lightning's teardown. The first callback (``fit.run_fit`` inserts
it), so its decision precedes the checkpoint callback's batch-end hook.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from trainer.signals import SignalState


class RankAgreement(Callback):
    """Agree across ranks, once per train step, on stopping (SIGTERM) and saving (SIGUSR1)."""

    def __init__(self, signals: SignalState, on_failure: Callable[[BaseException], None] | None = None) -> None:
        super().__init__()
        self.signals = signals
        self.on_failure = on_failure

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.on_failure is None:
            return
        try:
            self.on_failure(exception)
        except Exception as exc:  # the final exit record is still written on the way out
            print(f"[trainer] could not write the early exit record: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == TrainerFn.FITTING:
            take_over_sigterm(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stop, _ = self._agree(trainer, take_save=False)
        if stop:
            # Nothing trained by this attempt yet: stop together, with nothing to save.
            raise SIGTERMException

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop, save = self._agree(trainer, take_save=True)
        if save:
            self.signals.agreed_save = True
        if stop:
            # Lightning raises SIGTERMException at the end of this batch, on every rank alike.
            trainer._signal_connector.received_sigterm = True

    def _agree(self, trainer: pl.Trainer, *, take_save: bool) -> tuple[bool, bool]:
        local_stop = self.signals.stop_signal is not None
        local_save = self.signals.take_save_request() if take_save else False
        if not (dist.is_available() and dist.is_initialized()):
            return local_stop, local_save
        flags = torch.tensor([int(local_stop), int(local_save)], dtype=torch.int32,
                             device=trainer.strategy.root_device)  # (2,): [stop, save]
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        stop, save = flags.tolist()
        return bool(stop), bool(save)


def take_over_sigterm(trainer: pl.Trainer) -> None:
    """Keep Lightning from installing its SIGTERM handler for this fit (see the module docstring).

    ``register_signal_handlers`` is replaced on this trainer's connector only;
    its ``received_sigterm`` flag stays the one Lightning's loops read.
    """
    connector = trainer._signal_connector

    def register_nothing() -> None:
        connector.received_sigterm = False

    connector.register_signal_handlers = register_nothing  # type: ignore[method-assign]
