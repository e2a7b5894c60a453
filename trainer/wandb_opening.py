"""A W&B logger whose run opens in a background thread, so that opening it never delays the first step.

``wandb.init`` takes 0.5-3 s even offline, and Lightning calls it in its setup
hook, before the checkpoint is restored: on a restart that is on the path to the
next step. ``OpeningWandbLogger`` wraps the job's ``WandbLogger``: the run opens
in a thread while Lightning restores and trains; what is logged before it is
open is kept in order and replayed on the main thread (at the next logging call,
or at ``settle``, which every way out of the fit calls). ``logger.experiment``
is a stand-in that waits for the run on first use; all W&B calls but
``wandb.init`` stay on the main thread.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger

Action = Callable[[WandbLogger], None]


class OpeningWandbLogger(Logger):
    """The job's ``WandbLogger`` (``inner``), its run opened in a background thread (module docstring)."""

    def __init__(self, inner: WandbLogger) -> None:
        super().__init__()
        self._inner = inner
        self._open = threading.Event()
        self._error: BaseException | None = None
        self._pending: list[Action] = []
        self.opened_in_s: float | None = None  # how long the run took to open (for the log)
        self._thread = threading.Thread(target=self._open_run, name="wandb-open", daemon=True)
        self._thread.start()

    def _open_run(self) -> None:
        started = time.monotonic()
        try:
            _ = self._inner.experiment  # wandb.init
        except BaseException as exc:  # raised on the main thread at its next W&B call (as a cold start would)
            self._error = exc
        finally:
            self.opened_in_s = time.monotonic() - started
            self._open.set()

    @property
    def inner(self) -> WandbLogger:
        """The wrapped ``WandbLogger`` (its run may not be open yet)."""
        return self._inner

    # -- what Lightning calls --------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._inner.name

    @property
    def version(self) -> str | int | None:
        return self._inner.version  # the fixed run id until the run is open, then the run's (the same)

    @property
    def save_dir(self) -> str | None:
        return self._inner.save_dir

    @property
    def experiment(self) -> Any:
        """The W&B run; before it is open, a stand-in that waits for it on first use."""
        if self._open.is_set():
            return self.settle()
        return _RunOnceOpen(self)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = dict(metrics)  # Lightning may reuse the mapping it passes
        self.when_open(lambda inner: inner.log_metrics(values, step=step))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self.when_open(lambda inner: inner.log_hyperparams(params, *args, **kwargs))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.when_open(lambda inner: inner.after_save_checkpoint(checkpoint_callback))

    def watch(self, model: Any, log: str | None = "gradients", log_freq: int = 100, log_graph: bool = True) -> None:
        """``WandbLogger.watch``, once the run is open."""
        self.when_open(lambda inner: inner.watch(model, log=log, log_freq=log_freq, log_graph=log_graph))

    def finalize(self, status: str) -> None:
        if status == "success":
            self.settle()
        else:
            self.settle_quietly()  # a failing fit: its own exception is the one to report
        self._inner.finalize(status)

    def __getattr__(self, name: str) -> Any:
        # Only for what this class lacks (log_image, log_table, use_artifact, ...): wait for the run.
        if name.startswith("_"):
            raise AttributeError(name)
        self.settle()
        return getattr(self._inner, name)

    # -- ours ------------------------------------------------------------------------------------------
    def when_open(self, action: Action) -> None:
        """Run ``action(inner)`` now if the run is open (after what waits), else keep it for later."""
        if not self._open.is_set():
            self._pending.append(action)
            return
        self._drain()
        action(self._inner)

    def settle(self) -> Any:
        """Wait for the run to open, replay what waited, and return the run (raises if it failed to open)."""
        self._open.wait()
        self._drain()
        return self._inner.experiment

    def settle_quietly(self) -> None:
        """``settle`` on the way out of a fit: a run that failed to open is reported, not raised."""
        try:
            self.settle()
        except Exception as exc:
            print(f"[trainer] W&B: the run did not open: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)

    def _drain(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self._pending.clear()
            raise error
        while self._pending:
            self._pending.pop(0)(self._inner)


# User code that checks ``isinstance(trainer.logger, WandbLogger)`` before calling W&B-only methods
# keeps working: everything a WandbLogger has is here (above, or through __getattr__).
WandbLogger.register(OpeningWandbLogger)


class _RunOnceOpen:
    """``experiment`` before the run is open: on first use of any attribute, the run's (waits for it)."""

    def __init__(self, logger: OpeningWandbLogger) -> None:
        self._logger = logger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger.settle(), name)

    def __bool__(self) -> bool:
        return True
