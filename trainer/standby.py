"""``python -m trainer --standby``: a trainer that does its slow start-up now and fits later.

The daemon starts it (through an attempt monitor, in the directory of the
attempt it would become) while the job's current attempt still runs. It loads
the config, imports torch, Lightning, W&B and the user's modules, seeds and
builds the model and data module, writes ``standby-ready.json``, then waits.
When the running attempt ends and the policy says restart, the daemon writes
``handover.json`` (the cold attempt's argv and environment, and the job's lock
path); the standby takes the job's lock and fits exactly as a cold attempt
would (same exit record, heartbeat and manifest rules).

What depends on the attempt is left for the handover: the GPUs (CUDA reads
``CUDA_VISIBLE_DEVICES`` once, when it initialises, so nothing here touches
CUDA or builds the ``Trainer``), the checkpoint, the deadline, W&B (the run
belongs to the running attempt until it ends; it opens in the background after
the handover: ``trainer.wandb_opening``). While it waits, the standby keeps the
checkpoint the daemon would choose now loaded on the CPU
(``trainer.checkpoint_cache``), so the restart need not read it from disk.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import ConfigError
from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import EXIT_CONFIG_ERROR, EXIT_EXCEPTION

READY_FILE = "standby-ready.json"  # written by the standby when its start-up is done
HANDOVER_FILE = "handover.json"  # written by the daemon: "become this attempt"
NICE_ENV = "ML_SUPERVISOR_STANDBY_NICE"  # the niceness to prepare at (supervisor/runners/standby.py)
HANDOVER_POLL_S = 0.01  # an idle stat() every 10 ms costs nothing and bounds the handover's latency
LOCK_WAIT_S = 30.0  # the daemon saw the lock free before the handover; this only covers a slow exit


@dataclass
class PreparedRun:
    """What a standby built before its handover (``trainer.runner.run_fit`` skips building these)."""

    cfg: Any  # DictConfig
    job: Any  # trainer.build.ResolvedJob
    model: Any  # the LightningModule, on the CPU
    datamodule: Any
    checkpoint_cache: Any = None  # trainer.checkpoint_cache.CheckpointCache: the likely resume checkpoint


@dataclass
class Handover:
    """The daemon's ``handover.json``: the argv and environment of the cold attempt, and the job's lock."""

    argv: list[str]
    env: dict[str, str]
    lock_path: str


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Prepare, wait for the handover, then fit as the attempt it names (the exit code of that fit)."""
    nice = os.environ.get(NICE_ENV)
    if nice:  # background work until the handover, when the daemon gives us our priority back
        os.nice(int(nice))
    from supervisor.config import load_job_config
    from trainer.cli import apply_environment, fit

    attempt_dir = Path(args.attempt_dir).absolute()
    attempt_dir.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_job_config(args.config, args.overrides)
        apply_environment(cfg, args.config)
        prepared = prepare(cfg, args.config)
    except ConfigError as exc:
        _not_ready(attempt_dir, exc.message)
        return EXIT_CONFIG_ERROR
    except Exception as exc:  # a standby that cannot prepare is replaced by a cold start: say why, exit
        _not_ready(attempt_dir, f"{type(exc).__name__}: {exc}")
        return EXIT_EXCEPTION
    touched = cuda_touched()
    if touched:
        # CUDA would keep the standby's (empty) CUDA_VISIBLE_DEVICES: the handover could not give it its GPUs.
        _not_ready(attempt_dir, f"CUDA was initialised while preparing ({touched}); a standby must leave that to "
                   "the handover, which names the GPUs: the job restarts cold")
        return EXIT_EXCEPTION
    write_json_atomic(attempt_dir / READY_FILE, {
        "pid": os.getpid(), "ready_at": time.time(), "modules": user_module_mtimes(Path(cfg.workdir or os.getcwd())),
    })
    prepared.checkpoint_cache = checkpoint_cache(args, cfg, attempt_dir)
    handover = wait_for_handover(attempt_dir, idle=prepared.checkpoint_cache.refresh)
    if handover is None:
        return EXIT_EXCEPTION  # the monitor is gone: nobody would record this attempt
    started_at = time.time()
    os.environ.update(handover.env)
    fit_args = parser.parse_intermixed_args(handover.argv)
    if Path(fit_args.attempt_dir).absolute() != attempt_dir:
        print(f"[trainer] handover for {fit_args.attempt_dir}, standby of {attempt_dir}: refusing", file=sys.stderr)
        return EXIT_EXCEPTION
    if not take_lock(handover.lock_path):
        print(f"[trainer] the job's lock {handover.lock_path} stayed held: another trainer of this job lives",
              file=sys.stderr, flush=True)
        return EXIT_EXCEPTION
    return fit(fit_args, started_at, prepared=prepared)


def prepare(cfg: Any, source: str) -> PreparedRun:
    """Everything that does not depend on the checkpoint, the GPUs or the W&B run: imports, model, data."""
    from trainer.runner import prepare_run

    job, model, datamodule = prepare_run(cfg, source)
    if str(cfg.logger.wandb.mode) != "disabled":
        import pytorch_lightning.loggers.wandb  # noqa: F401 - the import is the slow part of opening the run
        import wandb  # noqa: F401
    return PreparedRun(cfg=cfg, job=job, model=model, datamodule=datamodule)


def cuda_touched(maps: str | None = None) -> str | None:
    """Why CUDA may already be initialised in this process, or None.

    ``torch.cuda.is_initialized()`` misses the quieter way: ``torch.cuda.is_available()``
    (which libraries call at import) asks the CUDA runtime for its device count unless
    ``PYTORCH_NVML_BASED_CUDA_CHECK`` is set (the daemon sets it for standbys), and that
    loads the driver, which reads ``CUDA_VISIBLE_DEVICES`` then and never again. The
    driver library in our memory map (``/proc/self/maps``, or ``maps``) says it happened.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "torch.cuda is initialised"
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    if "/libcuda.so" in maps:
        return "the CUDA driver, libcuda, is loaded"
    return None


def checkpoint_cache(args: argparse.Namespace, cfg: Any, attempt_dir: Path) -> Any:
    """The cache of the checkpoint the next attempt will likely resume from (``trainer.checkpoint_cache``)."""
    from trainer.checkpoint_cache import CheckpointCache, limit_from_env

    checkpoint_dir = Path(args.checkpoint_dir).absolute() if args.checkpoint_dir else attempt_dir / "checkpoints"
    return CheckpointCache(checkpoint_dir, str(cfg.supervision.resume_from), limit_from_env())


def user_module_mtimes(workdir: Path) -> dict[str, float]:
    """The modules imported from the job's workdir (not installed packages), with their mtimes.

    The daemon compares them before a promotion: a standby that imported code
    since edited on disk is stale, and a cold start runs the new code instead.
    """
    root = str(workdir.absolute()) + os.sep
    found: dict[str, float] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.startswith(root) or "site-packages" in path:
            continue
        try:
            found[path] = os.stat(path).st_mtime
        except OSError:
            continue
    return found


def wait_for_handover(attempt_dir: Path, idle: Callable[[], None] | None = None) -> Handover | None:
    """Poll for ``handover.json``; None when our monitor died meanwhile (we were orphaned).

    ``idle`` runs between polls (the checkpoint cache's refresh: a load in progress
    when the handover comes finishes first, which costs no more than the restart
    reading that checkpoint from disk).
    """
    path = attempt_dir / HANDOVER_FILE
    parent = os.getppid()
    while True:
        if idle is not None:
            idle()
        try:
            data = json.loads(path.read_text())
            return Handover(argv=[str(a) for a in data["argv"]], env={str(k): str(v) for k, v in data["env"].items()},
                            lock_path=str(data["lock_path"]))
        except FileNotFoundError:
            pass
        if os.getppid() != parent:
            return None
        time.sleep(HANDOVER_POLL_S)


def take_lock(lock_path: str, wait_s: float = LOCK_WAIT_S) -> bool:
    """Hold the job's lock for the rest of this process's life (the kernel drops it when we die)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # fd stays open on purpose
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(0.01)


def _not_ready(attempt_dir: Path, message: str) -> None:
    print(f"[trainer] standby cannot prepare: {message}", file=sys.stderr, flush=True)
    write_json_atomic(attempt_dir / READY_FILE, {"pid": os.getpid(), "failed": message})
