"""``ManifestCheckpoint``: Lightning's ModelCheckpoint, made crash-safe and readable without torch.

- every save goes to a temp file, is fsynced and renamed into place, and only
  then gets a ``save`` line in ``manifest.jsonl`` (never a partial file); every
  top-k removal gets a ``remove`` line;
- ``last.ckpt`` at a top-k save's step is a hard link to it (a copy where links fail);
- SIGTERM saves ``last.ckpt`` (kind ``signal``) on the way out; SIGUSR1 saves it
  at the next train batch end and training goes on; the end of a fit saves it too;
- with no monitor, top-k keeps the newest ``save_top_k`` files (ranked by ``step``);
- ``async_save`` (``checkpoint.async``): a scheduled save snapshots; the file work runs on a writer thread
  (``async_save.py``); the saves on the way out and SIGUSR1's wait for it and are synchronous.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from supervisor.jobfiles.atomic import append_json_line, finite_or_none
from supervisor.jobfiles.layout import manifest_path
from supervisor.jobfiles.manifest import CheckpointEntry, record_remove, record_save
from trainer.callbacks.async_save import BackgroundWriter, SnapshotCheckpointIO, write_snapshot
from trainer.callbacks.checkpoint_files import (
    CheckpointSaveError,
    copy_durably,
    fsync_path,
    remove_stale_temp_files,
    temp_path_for,
)
from trainer.progress import HeartbeatWriter
from trainer.signals import SignalState

# Without a user monitor, top-k ranks by this always-present candidate (newest wins).
STEP_MONITOR = "step"


class ManifestCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that writes atomically and records every save in the manifest.

    ``monitor``/``mode`` are the user's: they go into the manifest as given
    (``None`` means "best" is the newest). Only global rank 0 writes files and
    manifest lines.
    """

    def __init__(
        self,
        dirpath: str | Path,
        *,
        attempt: int,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int = 3,
        save_last: bool = True,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        filename: str | None = None,
        save_weights_only: bool = False,
        save_final: bool = True,
        heartbeat: HeartbeatWriter | None = None,
        signals: SignalState | None = None,
        async_save: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            monitor=monitor if monitor is not None else STEP_MONITOR,
            mode=mode if monitor is not None else "max",
            save_top_k=save_top_k,
            save_last=save_last,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            save_weights_only=save_weights_only,
        )
        assert self.dirpath is not None
        self.manifest = manifest_path(self.dirpath)
        self.attempt = attempt
        self.user_monitor = monitor
        self.user_mode = mode
        self.save_final = save_final or save_last
        self.heartbeat = heartbeat
        self.signals = signals
        self.signal_checkpoint: str | None = None  # the path saved on the way out after SIGTERM
        self._kind_override: str | None = None
        # The newest file this process saved and its step (Lightning's own fields skip
        # out-of-schedule saves, see save_last_now).
        self._saved_file: str | None = None
        self._saved_step: int | None = None
        self._start_step: int | None = None  # global step when this process's training started
        # The last validation's step and monitor value: a step-triggered save whose monitor still
        # holds that value (at another step) would be scored with someone else's score.
        self._validated_step: int | None = None
        self._validated_value: float | None = None
        self._topk_pending = False
        self._multi_process = False
        self._save_s: float | None = None
        self._writer = BackgroundWriter() if async_save else None
        self._sync_now = False  # this save is on a way out (or SIGUSR1's): no background write
        self._pending_path: str | None = None  # the file the newest snapshot goes to

    # --- lifecycle --------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._multi_process = trainer.world_size > 1
        if trainer.is_global_zero and stage == TrainerFn.FITTING:
            assert self.dirpath is not None
            os.makedirs(self.dirpath, exist_ok=True)
            remove_stale_temp_files(self.dirpath)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_step = trainer.global_step
        if not self._multi_process and self.signals is not None and self.signals.stop_signal == signal.SIGTERM:
            # SIGTERM came before Lightning's handler was in place: stop the way Lightning would.
            # (Several ranks stop together through RankAgreement: one rank raising alone would hang the rest.)
            raise SIGTERMException
        # After a resume: the restored step is already saved; top-k forgets files that are gone.
        self._last_global_step_saved = trainer.global_step
        self._forget_missing_best_k()
        last = self._last_path()
        if os.path.exists(last):
            # Adopt the existing last.ckpt, or Lightning would write last-v1.ckpt beside it.
            self.last_model_path = last

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._step_save_due(trainer, pl_module) and self._monitor_unvalidated(trainer):
            # These weights were never validated: the monitor holds an older validation's value
            # (or none yet). Keep them as last.ckpt now; the top-k decision waits for the next
            # validation, so a top-k file's score is always its own weights' score.
            self._topk_pending = True
            if self.save_last and trainer.global_step != self._last_global_step_saved:
                self.save_last_now(trainer, kind="last")
        else:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.signals is not None and (self.signals.save_requested or self.signals.agreed_save) \
                and self._save_requested(trainer):
            self.save_last_now(trainer, kind="last", scheduled=False)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._validated_step = trainer.global_step
        self._validated_value = self._monitor_value(trainer)
        # (Lightning < 2.5 has no deferred save.)
        if (self._topk_pending or getattr(self, "_defer_save_until_validation", False)) and not _fast_dev_run(trainer):
            # Lightning drops a deferred save when it saves on train epoch end; do it here, scored fresh.
            self._topk_pending = self._defer_save_until_validation = False
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)
        super().on_validation_end(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Replaces Lightning's (which saves "last" only if nothing was saved during the fit):
        # a fit stopped by max_steps, a deadline or early stopping keeps its final steps.
        self._sync_now = True
        if self.save_final and not _fast_dev_run(trainer) and trainer.global_step != self._last_global_step_saved:
            self.save_last_now(trainer, kind="last")
        if self._writer is not None:
            self._writer.drain()
            self._writer.close()
            if self._multi_process:  # no rank ends its fit before rank 0's last file and line are down
                trainer.strategy.barrier("manifest_checkpoint_drained")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Only Lightning's own stop, raised at a batch boundary, leaves a consistent state to save.
        # Anything else raised after a SIGTERM (a DataLoader worker that got the signal too
        # kills the fit from a SIGCHLD handler, anywhere in a step) is not saved.
        self._sync_now = True
        self._drain_quietly()  # a crash or divergence keeps a save in flight: it is an earlier, whole state
        if not isinstance(exception, SIGTERMException) or trainer.sanity_checking \
                or trainer.state.fn != TrainerFn.FITTING:
            return
        if self._start_step is None or trainer.global_step <= self._start_step:
            return  # no step taken by this process: what it would save is already on disk (or untrained)
        try:
            self.signal_checkpoint = self.save_last_now(trainer, kind="signal")
        except Exception as exc:  # the exit record must still be written
            print(f"[trainer] could not save a checkpoint after SIGTERM: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    # --- saving -----------------------------------------------------------------------------

    def save_last_now(self, trainer: pl.Trainer, *, kind: str, scheduled: bool = True) -> str:
        """Save the current state as ``last.ckpt`` with manifest kind ``kind``; returns the path.

        An unscheduled save (SIGUSR1) leaves Lightning's "already saved at this
        step" marker alone, so the top-k save due at this step still happens.
        """
        filepath = self._last_path()
        self.last_model_path = filepath  # part of the saved state, so set before saving
        lightning_marks = (self._last_global_step_saved, self._last_checkpoint_saved)
        self._kind_override, exiting = kind, self._sync_now
        self._sync_now = exiting or not scheduled
        try:
            self._save_checkpoint(trainer, filepath)
        finally:
            self._kind_override, self._sync_now = None, exiting
        if not scheduled:
            self._last_global_step_saved, self._last_checkpoint_saved = lightning_marks
        return filepath

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        kind = self._kind_override or ("last" if filepath == self.last_model_path else "topk")
        started = time.perf_counter()
        writer, facts = self._writer_now(), dict[str, Any]()
        with self._phase("checkpoint"):
            same_step = self._same_step_file(trainer)
            if same_step is not None and kind != "topk":
                # A top-k file holds this very step's state: last.ckpt can share its bytes.
                if same_step != filepath:
                    self._files(writer, lambda: self._link_or_copy(trainer, same_step, filepath))
            elif writer is not None:
                facts = self._snapshot(trainer, writer, filepath)
            else:
                self._write_atomically(trainer, filepath)
        # The stall (async: the wait for the previous save and the snapshot): what every_n_train_steps: auto weighs.
        # A link to this step's top-k file is no save: its near-zero cost would drag the median down.
        self._save_s = None if same_step is not None and kind != "topk" else time.perf_counter() - started
        self._saved_file, self._saved_step = filepath, trainer.global_step
        # Lightning's bookkeeping, as the parent does it.
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            entry = self._entry(trainer, filepath, kind)
            self._files(writer, lambda: self._record(entry, facts))
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        # No rank leaves a save before rank 0 has recorded it: a rank that then exits (a stop) makes its
        # peers be stopped, and rank 0 must not be stopped between the rename and the manifest line.
        trainer.strategy.barrier("manifest_checkpoint_recorded")

    def _write_atomically(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = temp_path_for(filepath)
        if trainer.is_global_zero:
            # A leftover temp name may be a hard link to a live checkpoint: never write through it.
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        try:
            # Collective in multi-process runs; rank 0 writes the temp file.
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                fsync_path(tmp)
        except BaseException as exc:
            # Disk full (or any failure) mid-save: drop the partial file, so its space comes back
            # for the exit record, and say plainly why. The manifest never named it.
            if trainer.is_global_zero:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
            if isinstance(exc, Exception):
                raise CheckpointSaveError(filepath, exc) from exc
            raise
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
            fsync_path(os.path.dirname(filepath))

    def _writer_now(self) -> BackgroundWriter | None:
        """This save's writer; None for a synchronous one (then the writer's queue is done first: files in order)."""
        if self._writer is None:
            return None
        if self._sync_now:
            self._writer.drain()
            return None
        return self._writer

    def _files(self, writer: BackgroundWriter | None, task: Any) -> None:
        """File work of a save: now, or on the writer's thread after the work queued before it."""
        if writer is None:
            task()
        else:
            writer.submit(task)

    def _snapshot(self, trainer: pl.Trainer, writer: BackgroundWriter, filepath: str) -> dict[str, Any]:
        """Take the save's snapshot (after the previous one is written) and queue its write; returns the facts
        the write fills in for the manifest line."""
        io = trainer.strategy.checkpoint_io
        if not isinstance(io, SnapshotCheckpointIO):  # the strategy replaced the plugin: save as before
            self._write_atomically(trainer, filepath)
            return {}
        writer.wait_for_slot()
        tmp, facts = temp_path_for(filepath), dict[str, Any]()
        with io.capture():  # collective in multi-process runs; only rank 0 is handed the dict
            trainer.save_checkpoint(tmp, self.save_weights_only)
        snapshot, self._pending_path = io.captured, filepath
        if snapshot is not None:
            def write() -> None:
                try:
                    write_snapshot(io, snapshot, tmp, filepath, facts)
                except Exception as exc:
                    raise CheckpointSaveError(filepath, exc) from exc
            writer.submit(write, holds_snapshot=True)
        return facts

    def _drain_quietly(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.drain()
        except Exception as exc:  # the way out goes on: its exit record must still be written
            print(f"[trainer] the checkpoint being written in the background failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)

    def _link_or_copy(self, trainer: pl.Trainer, source: str, filepath: str) -> None:
        """``filepath`` becomes the same bytes as ``source`` (saved at this very step), atomically."""
        if trainer.is_global_zero:
            tmp = temp_path_for(filepath)
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            try:
                os.link(source, tmp)
            except OSError:
                copy_durably(source, tmp)
            os.replace(tmp, filepath)
            fsync_path(os.path.dirname(filepath))

    def _same_step_file(self, trainer: pl.Trainer) -> str | None:
        """A complete file this process saved at the current global step, if any."""
        if self._saved_file and self._saved_step == trainer.global_step and (
                self._saved_file == self._pending_path or os.path.isfile(self._saved_file)):
            return self._saved_file  # (the pending one is written before the link: one writer, in order)
        return None

    def _remove_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        def remove() -> None:
            super(ManifestCheckpoint, self)._remove_checkpoint(trainer, filepath)
            if trainer.is_global_zero:
                record_remove(self.manifest, os.path.abspath(filepath), self.attempt)
        # With async, after the file that replaces it is down: top-k never has fewer files than it should.
        self._files(None if self._writer is None or self._sync_now else self._writer, remove)

    def _entry(self, trainer: pl.Trainer, filepath: str, kind: str) -> CheckpointEntry:
        """The save's manifest entry as of now (size and time are filled in when it is recorded)."""
        metrics = trainer.callback_metrics
        score = None
        if self.user_monitor is not None:
            score = finite_or_none(_as_float(metrics.get(self.user_monitor)))
        return CheckpointEntry(
            path=os.path.abspath(filepath),
            step=trainer.global_step,
            epoch=trainer.current_epoch,
            monitor=self.user_monitor,
            score=score,
            mode=self.user_mode,
            size=0,
            time=0.0,
            attempt=self.attempt,
            kind=kind,
            finite=all(finite_or_none(v) is not None for v in map(_as_float, metrics.values()) if v is not None),
            save_s=round(self._save_s, 6) if self._save_s is not None else None,
        )

    def _record(self, entry: CheckpointEntry, facts: dict[str, Any]) -> None:
        """The manifest line, once the file is complete (``facts``: an async save's snapshot size and write time)."""
        entry = dataclasses.replace(entry, size=os.path.getsize(entry.path), time=time.time())
        if facts:
            append_json_line(self.manifest, {**entry.to_event(), **facts})
        else:
            record_save(self.manifest, entry)

    # --- helpers ----------------------------------------------------------------------------

    def _last_path(self) -> str:
        return self.format_checkpoint_name({}, self.CHECKPOINT_NAME_LAST)

    def _step_save_due(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """A step-count save with a monitor is due now (per step: cheap tests first)."""
        n = self._every_n_train_steps
        if n < 1 or self.user_monitor is None or trainer.global_step % n:
            return False
        return pl_module.automatic_optimization and not self._should_skip_saving_checkpoint(trainer)

    def _monitor_unvalidated(self, trainer: pl.Trainer) -> bool:
        """Whether the monitor is missing, or still the last validation's value at a later step."""
        value = self._monitor_value(trainer)
        if value is None:
            return True
        return (self._validated_step is not None and trainer.global_step != self._validated_step
                and value == self._validated_value)

    def _monitor_value(self, trainer: pl.Trainer) -> float | None:
        if self.user_monitor is None:
            return None
        return finite_or_none(_as_float(trainer.callback_metrics.get(self.user_monitor)))

    def _save_requested(self, trainer: pl.Trainer) -> bool:
        assert self.signals is not None
        if self._multi_process:
            # Every rank must take part in a save: act only on what RankAgreement decided for all ranks.
            return self.signals.take_agreed_save()
        return self.signals.take_save_request()

    def _forget_missing_best_k(self) -> None:
        """Drop top-k entries whose file is gone (a resume from an older checkpoint restores stale ones)."""
        missing = [path for path in self.best_k_models if not os.path.exists(path)]
        if not missing:
            return
        for path in missing:
            del self.best_k_models[path]
        if self.kth_best_model_path in missing:
            self.kth_best_model_path = ""
        if self.best_model_path in missing:
            if self.best_k_models:
                pick = min if self.mode == "min" else max
                self.best_model_path = pick(self.best_k_models, key=lambda p: float(self.best_k_models[p]))
                self.best_model_score = self.best_k_models[self.best_model_path]
            else:
                self.best_model_path, self.best_model_score = "", None

    @contextlib.contextmanager
    def _phase(self, phase: str) -> Iterator[None]:
        if self.heartbeat is None:
            yield
            return
        previous = self.heartbeat.phase
        self.heartbeat.set_phase(phase)
        try:
            yield
        finally:
            self.heartbeat.set_phase(previous)


def _as_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else None
    return value


def _fast_dev_run(trainer: pl.Trainer) -> bool:
    """Whether this is a fast_dev_run (Lightning sets the attribute in a connector without declaring it)."""
    return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]
