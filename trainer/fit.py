"""The fit: build the Lightning run a job config describes, with the supervisor's callbacks, and fit it.

Imports torch and Lightning: ``trainer.attempt`` (and ``--check``, the standby)
import it only once the config's environment is applied (``env`` may hold
CUDA_VISIBLE_DEVICES or thread counts that must be set before torch loads).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, Timer
from pytorch_lightning.plugins.environments import SLURMEnvironment

from supervisor.config import parse_duration
from supervisor.errors import ConfigError
from supervisor.jobfiles.layout import AttemptLayout, manifest_path
from supervisor.jobfiles.manifest import abandon_after, abandon_all, record_unusable
from supervisor.rules.cadence import AUTO_DEFAULT_STEPS
from trainer.build import ResolvedJob, resolve_job
from trainer.callbacks.async_save import with_snapshot_io
from trainer.callbacks.checkpoint import ManifestCheckpoint
from trainer.callbacks.divergence import LossGuard, RollbackActions
from trainer.callbacks.elastic import ElasticResume, SamplesPerStep, with_world_size
from trainer.callbacks.log_samples import LogSamples, check_log_samples
from trainer.callbacks.progress import ProgressCallback
from trainer.callbacks.rank_sync import RankAgreement
from trainer.callbacks.run_info import WandbAttemptInfo
from trainer.checkpoint_cache import CachedCheckpointIO, CheckpointCache
from trainer.deadline import Deadline
from trainer.divergence import ANOMALY, NON_FINITE_METRIC, Diverged, Divergence, SpikeDetector
from trainer.job import LoadedJob
from trainer.profiling import profiler_into_attempt_dir
from trainer.progress import HeartbeatWriter
from trainer.ranks import RankInfo, wait_resume_ready, write_resume_ready
from trainer.signals import SignalState
from trainer.wandb_opening import OpeningWandbLogger
from trainer.wandb_run import build_wandb_logger

# Ranks >= 1 wait this long for rank 0 to rewind the manifest (rank 0's own start-up included).
RESUME_READY_TIMEOUT_S = 900.0

# Every resume finds the checkpoint directory non-empty; that is the point, not a problem.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


@dataclass
class FitOptions:
    """What the command line adds to the config for one attempt."""

    attempt_dir: Path
    checkpoint_dir: Path
    ckpt: str | None = None
    attempt: int = 1
    restarts: int = 0
    deadline: float | None = None  # unix time the job's budget ends
    rank: RankInfo = field(default_factory=RankInfo)
    # Multi-rank: called with the exception the moment the fit fails, before Lightning's teardown.
    on_failure: Callable[[BaseException], None] | None = None
    skip_batches: int = 0  # a rollback: drop this many training batches first
    lr_scale: float = 1.0  # a rollback: scale the learning rates once
    checkpoint_every: int | None = None  # checkpoint.every_n_train_steps: auto's steps, from the daemon
    devices: int | None = None  # elastic DDP: this attempt's world size (trainer.devices otherwise)
    accumulate: int | None = None  # elastic DDP: accumulate_grad_batches keeping the global batch at ``devices``


@dataclass
class PreparedRun:
    """What a standby built before its handover (``run_fit`` skips building these)."""

    cfg: DictConfig
    job: ResolvedJob
    model: Any  # the LightningModule, on the CPU
    datamodule: Any
    checkpoint_cache: CheckpointCache | None = None  # the likely resume checkpoint, loaded in memory


@dataclass
class RunState:
    """The parts of the run the exit record needs, whatever way the fit ends."""

    trainer: pl.Trainer | None = None
    checkpoint: ManifestCheckpoint | None = None
    deadline: Deadline | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def progress(self) -> tuple[int, int]:
        """(global step, epoch) reached so far; (0, 0) before the Trainer exists."""
        if self.trainer is None:
            return 0, 0
        return int(self.trainer.global_step), int(self.trainer.current_epoch)


def slurm_plugins(plugins: Any) -> list[Any]:
    """The Trainer's plugins with Lightning's SLURM environment told not to requeue.

    The supervisor owns restarts: ``auto_requeue`` would ``scontrol requeue`` the job on
    SIGUSR1 (our "save a checkpoint" signal) and run a second copy beside the daemon's.
    """
    given = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    kept = [p for p in given if not isinstance(p, SLURMEnvironment)]
    return [*kept, SLURMEnvironment(auto_requeue=False)]


def with_checkpoint_io(plugins: Any, checkpoint_io: Any) -> list[Any]:
    """The Trainer's plugins plus ``checkpoint_io``, unless they already hold a CheckpointIO (the user's wins)."""
    given = list(plugins) if isinstance(plugins, (list, tuple)) else ([] if plugins is None else [plugins])
    if any(isinstance(p, CheckpointIO) for p in given):
        return given
    return [*given, checkpoint_io]


def check_job(cfg: DictConfig, source: str) -> ResolvedJob:
    """``--check``: import and check everything the config names; build nothing unless an option needs a look."""
    job = resolve_job(cfg, source)
    if cfg.callbacks.log_samples:  # refused at submit when the module has no prediction to show
        check_log_samples(LoadedJob(cfg=cfg, source=source, job=job))
    return job


def run_fit(
    cfg: DictConfig,
    source: str,
    opts: FitOptions,
    signals: SignalState,
    heartbeat: HeartbeatWriter,
    state: RunState,
    prepared: PreparedRun | None = None,
) -> str:
    """Fit the job; returns the completion reason (raises on anything but completion).

    ``prepared``: the job, model and data module a standby built before its handover.
    """
    if prepared is None:
        job, model, datamodule = prepare_run(cfg, source)
    else:
        job, model, datamodule = prepared.job, prepared.model, prepared.datamodule
    if opts.devices is not None:  # elastic DDP: the attempt's size and accumulation, from the daemon
        job = replace(job, trainer_args=with_world_size(job.trainer_args, opts.devices, opts.accumulate))
    check_world_size(job.trainer_args, opts.rank, source)
    ckpt_path = prepare_resume_for_rank(opts)
    logger = build_wandb_logger(cfg, opts.attempt_dir)
    if logger is not None and not opts.rank.multi:
        logger = OpeningWandbLogger(logger)  # the run opens while Lightning restores and trains
    try:
        cache = prepared.checkpoint_cache if prepared is not None else None
        checkpoint_io = CachedCheckpointIO(cache) if cache is not None else None
        return _fit(cfg, source, opts, signals, heartbeat, state, (job, model, datamodule), ckpt_path, logger,
                    checkpoint_io)
    finally:
        if isinstance(logger, OpeningWandbLogger):
            logger.settle_quietly()  # nothing logged may wait in memory when the process ends


def _fit(cfg: DictConfig, source: str, opts: FitOptions, signals: SignalState, heartbeat: HeartbeatWriter,
         state: RunState, built: tuple[ResolvedJob, Any, Any], ckpt_path: str | None, logger: Any | None,
         checkpoint_io: Any | None = None) -> str:
    """Build the Trainer around the built job, model and data module and fit (``run_fit``'s second half).

    ``checkpoint_io``: a standby's ``CachedCheckpointIO``, used unless the config brings its own CheckpointIO.
    """
    job, model, datamodule = built
    callbacks = build_callbacks(cfg, job, opts, signals, heartbeat, state, logger)
    trainer_args = profiler_into_attempt_dir(dict(job.trainer_args), opts.attempt_dir)
    if checkpoint_io is not None:
        trainer_args["plugins"] = with_checkpoint_io(trainer_args.get("plugins"), checkpoint_io)
    if cfg.checkpoint["async"]:  # saves snapshot through this plugin, written by ManifestCheckpoint's thread
        trainer_args["plugins"] = with_snapshot_io(trainer_args.get("plugins"))
    trainer_args.setdefault("default_root_dir", str(opts.attempt_dir))
    if str(cfg.supervision.backend) == "slurm":
        trainer_args["plugins"] = slurm_plugins(trainer_args.get("plugins"))
    if ckpt_path is not None:
        # The sanity check guards a fresh run's validation code, which a resumed run has already run:
        # on a resume it only delays the first optimizer step.
        trainer_args.setdefault("num_sanity_val_steps", 0)
    try:
        trainer = pl.Trainer(**trainer_args, callbacks=callbacks, logger=logger if logger is not None else False)
    except Exception as exc:
        # Only the config reaches Trainer(...): a failure here fails every attempt alike, so it is a
        # config error (exit 2, no retry), not a crash to restart.
        raise ConfigError(source, "trainer", f"Trainer(...) failed: {type(exc).__name__}: {exc}".splitlines()[0]
                          ) from None
    state.trainer = trainer
    if trainer.world_size > 1:
        # First: it decides, for every rank at once, what the callbacks after it act on.
        trainer.callbacks.insert(0, RankAgreement(signals, on_failure=opts.on_failure))  # type: ignore[attr-defined]
    watch = str(cfg.logger.wandb.watch)
    if logger is not None and watch != "none":
        logger.watch(model, log=watch, log_freq=int(cfg.logger.wandb.watch_log_freq))

    signals.deferred = True  # inside fit, Lightning acts on SIGTERM at the next batch boundary
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        reason = stop_reason(trainer, state)
        if reason == "non_finite_metric" and cfg.supervision.divergence.enabled:
            raise Diverged(Divergence(step=trainer.global_step, check=NON_FINITE_METRIC))
    except Diverged as exc:
        mark_unusable(opts, exc)
        raise
    except RuntimeError as exc:
        if cfg.supervision.divergence.enabled and "returned nan values" in str(exc):  # torch's detect_anomaly
            diverged = Diverged(Divergence(step=trainer.global_step, check=ANOMALY, rank=opts.rank.rank))
            mark_unusable(opts, diverged)
            raise diverged from exc
        raise
    finally:
        signals.deferred = False
        signals.register_stack_dump()  # Lightning's teardown reset SIGUSR2 to SIG_DFL
    return "early_stopping" if reason == "non_finite_metric" else reason


def mark_unusable(opts: FitOptions, exc: Diverged) -> None:
    """Rank 0: every checkpoint saved at the first bad step or later is unusable (in case one slipped through)."""
    if opts.rank.rank == 0:
        record_unusable(manifest_path(opts.checkpoint_dir), exc.divergence.step, opts.attempt, str(exc))


def prepare_run(cfg: DictConfig, source: str) -> tuple[ResolvedJob, Any, Any]:
    """Resolve the config's classes, seed, and build the model and data module (no CUDA, no Trainer)."""
    job = resolve_job(cfg, source)
    if cfg.seed is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    return job, job.model.build(), job.data.build()


def check_world_size(trainer_args: dict[str, Any], rank: RankInfo, source: str) -> None:
    """With externally started ranks, ``trainer.devices`` x ``num_nodes`` must be the number started."""
    if not rank.multi:
        return
    devices, nodes = trainer_args.get("devices", "auto"), trainer_args.get("num_nodes", 1)
    try:
        expected = int(devices) * int(nodes)
    except (TypeError, ValueError):
        return  # "auto" or a device list: Lightning checks it against WORLD_SIZE itself
    if expected != rank.world_size:
        raise ConfigError(source, "trainer.devices",
                          f"{devices} device(s) x {nodes} node(s) = {expected} process(es), but the supervisor "
                          f"started {rank.world_size} ranks (one per device)")


def prepare_resume_for_rank(opts: FitOptions) -> str | None:
    """Rank 0 rewinds the manifest and says so; the other ranks wait for that, then resume from the same file."""
    ready = AttemptLayout(opts.attempt_dir).resume_ready
    if opts.rank.rank == 0:
        ckpt_path = prepare_resume(opts)
        # Always: when Lightning launches the other ranks itself (devices > 1 without the monitor's rank
        # environment), rank 0 cannot know yet that it has peers, and they would wait for this file forever.
        write_resume_ready(ready, ckpt_path)
        return ckpt_path
    return wait_resume_ready(ready, RESUME_READY_TIMEOUT_S)


def prepare_resume(opts: FitOptions) -> str | None:
    """The checkpoint to resume from, after rewinding the manifest's timeline to it.

    Resuming from a checkpoint older than the newest moves the newer ones to
    ``abandoned/<attempt>/``; starting with no checkpoint abandons them all
    (a fresh timeline from step 0).
    """
    manifest = manifest_path(opts.checkpoint_dir)
    if opts.ckpt is None:
        moved = abandon_all(manifest, opts.attempt)
        if moved:
            _log(f"starting from scratch: moved {len(moved)} checkpoint(s) of the old timeline aside")
        return None
    path = os.path.realpath(opts.ckpt)
    if not os.path.isfile(path):
        # Not a config error: the daemon verified the file, so this is a race worth a retry.
        raise FileNotFoundError(f"--ckpt: no such checkpoint file: {opts.ckpt}")
    moved = abandon_after(manifest, path, opts.attempt)
    if moved:
        _log(f"resuming from {path}: moved {len(moved)} newer checkpoint(s) aside")
    return path


def build_callbacks(
    cfg: DictConfig,
    job: ResolvedJob,
    opts: FitOptions,
    signals: SignalState,
    heartbeat: HeartbeatWriter,
    state: RunState,
    logger: Any | None,
) -> list[Callback]:
    """The supervisor's callbacks, the configured standard ones, then the user's extras."""
    ccfg = cfg.checkpoint
    interval = ccfg.train_time_interval
    checkpoint = ManifestCheckpoint(
        opts.checkpoint_dir,
        attempt=opts.attempt,
        monitor=ccfg.monitor,
        mode=ccfg.mode,
        save_top_k=int(ccfg.save_top_k),
        save_last=bool(ccfg.save_last),
        every_n_train_steps=auto_steps(ccfg.every_n_train_steps, opts.checkpoint_every),
        train_time_interval=timedelta(seconds=parse_duration(interval)) if interval is not None else None,
        every_n_epochs=ccfg.every_n_epochs,
        filename=ccfg.filename,
        save_weights_only=bool(ccfg.save_weights_only),
        # A deadline stop must leave a checkpoint to continue from, whatever save_last says.
        save_final=opts.deadline is not None,
        heartbeat=heartbeat,
        signals=signals,
        async_save=bool(ccfg["async"]),
    )
    state.checkpoint = checkpoint
    state.deadline = Deadline(opts.deadline) if opts.deadline is not None else None
    div = cfg.supervision.divergence
    guard = LossGuard(SpikeDetector(
        spike_factor=None if div.spike_factor is None else float(div.spike_factor),
        patience=int(div.spike_patience), window=int(div.spike_window),
        warmup_steps=int(div.warmup_steps))) if div.enabled else None
    callbacks: list[Callback] = [ProgressCallback(heartbeat, state.deadline, guard), checkpoint]
    if opts.skip_batches or opts.lr_scale != 1.0:
        callbacks.append(RollbackActions(opts.attempt_dir, skip_batches=opts.skip_batches, lr_scale=opts.lr_scale,
                                         resumed_step=None))
    es = cfg.callbacks.early_stopping
    if es.monitor is not None:
        callbacks.append(EarlyStopping(monitor=es.monitor, patience=int(es.patience), mode=es.mode,
                                       min_delta=float(es.min_delta)))
    if cfg.callbacks.lr_monitor:
        if logger is None:
            _log("callbacks.lr_monitor needs a logger and W&B is disabled: not monitoring the learning rate")
        else:
            callbacks.append(LearningRateMonitor(logging_interval="step"))
    if logger is not None:
        callbacks.append(WandbAttemptInfo(logger, cfg, attempt=opts.attempt, restarts=opts.restarts))
    if cfg.callbacks.log_samples:
        if logger is None:
            _log("callbacks.log_samples needs W&B and W&B is disabled: not logging samples")
        else:
            callbacks.append(LogSamples(logger, count=int(cfg.callbacks.log_samples_count)))
    if opts.devices is not None:  # elastic DDP: the samples of each optimizer step, for the global batch's proof
        callbacks += [SamplesPerStep(opts.attempt_dir, opts.rank.rank, opts.devices, opts.accumulate or 1),
                      ElasticResume(opts.devices, opts.accumulate or 1)]
    callbacks.extend(spec.build() for spec in job.callbacks)
    return callbacks


def auto_steps(configured: Any, chosen: int | None) -> int | None:
    """The save interval in steps: the config's number, or for ``auto`` the daemon's choice (a default without)."""
    if configured != "auto":
        return configured  # an int, or None: a validated config
    return chosen if chosen is not None else AUTO_DEFAULT_STEPS


def stop_reason(trainer: pl.Trainer, state: RunState) -> str:
    """Why a fit that returned normally stopped (the exit record's ``reason``)."""
    for callback in _callbacks(trainer):
        if isinstance(callback, EarlyStopping) and _early_stopped(callback):
            reason = getattr(getattr(callback, "stopping_reason", None), "name", "")
            return "non_finite_metric" if reason == "NON_FINITE_METRIC" else "early_stopping"
    if state.deadline is not None and state.deadline.triggered:
        return "deadline"
    for callback in _callbacks(trainer):
        if isinstance(callback, Timer):
            remaining = callback.time_remaining()
            if remaining is not None and remaining <= 0:
                return "max_time"
    if trainer.max_steps is not None and trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps:
        return "max_steps"
    if trainer.max_epochs is not None and trainer.max_epochs >= 0 and trainer.current_epoch >= trainer.max_epochs:
        return "max_epochs"
    return "stopped"


def _early_stopped(callback: EarlyStopping) -> bool:
    reason = getattr(callback, "stopping_reason", None)
    if reason is not None:
        return getattr(reason, "name", str(reason)) != "NOT_STOPPED"
    return bool(callback.stopped_epoch)  # Lightning < 2.6 has no stopping_reason


def _log(message: str) -> None:
    print(f"[trainer] {message}", file=sys.stderr, flush=True)


def _callbacks(trainer: pl.Trainer) -> list[pl.Callback]:
    """The Trainer's callbacks (Lightning sets the attribute in a connector without declaring it)."""
    return list(trainer.callbacks)  # type: ignore[attr-defined]
