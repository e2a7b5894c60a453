"""``python -m trainer --standby``: a trainer that does its slow start-up now and fits later.

It loads the config, imports torch, Lightning, W&B and the user's modules,
builds the model and data module, writes its ready file and waits (one such
process per rank of a DDP job). When the daemon writes ``handover.json`` it
takes on the cold attempt's argv and environment (under its own rank
variables), takes the job's lock and runs the attempt as a cold start would
(``trainer.attempt``). What depends on the attempt waits for the handover: the
GPUs (nothing here touches CUDA), the checkpoint (kept loaded meanwhile:
``trainer.checkpoint_cache``), the deadline and the W&B run. Torch-free at
import: ``prepare`` imports the fit. See docs/architecture.md, "Standby trainers".
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
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from supervisor.errors import ConfigError
from supervisor.jobfiles.atomic import write_json_atomic
from supervisor.jobfiles.layout import EXIT_CONFIG_ERROR, EXIT_EXCEPTION
from supervisor.jobfiles.standbyfiles import HANDOVER_FILE, LOCK_FD_ENV, NICE_ENV, ready_file_name
from trainer.attempt import run_attempt
from trainer.job import load_config
from trainer.ranks import RankInfo, rank_from_env

if TYPE_CHECKING:
    from trainer.checkpoint_cache import CheckpointCache
    from trainer.fit import PreparedRun

# What the attempt monitor gives each rank (rank_environment) and the handover must not overwrite:
# the attempt's environment is the job's, the same for every rank; these say which rank this process is.
RANK_ENV_KEYS = ("MASTER_ADDR", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")
HANDOVER_POLL_S = 0.01  # an idle stat() every 10 ms costs nothing and bounds the handover's latency
LOCK_WAIT_S = 30.0  # the daemon saw the lock free before the handover; this only covers a slow exit
# A standby forked by the job's zygote (trainer.zygote) runs the code the zygote imported: path -> the mtime
# it had then. Reported instead of the file's mtime now, so an edit made since makes this standby stale.
INHERITED_MODULE_MTIMES: dict[str, float] = {}


@dataclass
class Handover:
    """The daemon's ``handover.json``: the argv and environment of the cold attempt, and the job's lock."""

    argv: list[str]
    env: dict[str, str]
    lock_path: str
    master_port: int | None = None  # several ranks: the attempt's rendezvous port, chosen at the handover


def serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Prepare, wait for the handover, then fit as the attempt it names (the exit code of that fit)."""
    nice = os.environ.get(NICE_ENV)
    if nice:  # background work until the handover, when the daemon gives us our priority back
        os.nice(int(nice))
    attempt_dir = Path(args.attempt_dir).absolute()
    attempt_dir.mkdir(parents=True, exist_ok=True)
    rank = rank_from_env()
    try:
        cfg = load_config(args.config, args.overrides)
        prepared = prepare(cfg, args.config)
    except ConfigError as exc:
        _not_ready(attempt_dir, rank, exc.message)
        return EXIT_CONFIG_ERROR
    except Exception as exc:  # a standby that cannot prepare is replaced by a cold start: say why, exit
        _not_ready(attempt_dir, rank, f"{type(exc).__name__}: {exc}")
        return EXIT_EXCEPTION
    touched = cuda_touched()
    if touched:
        # CUDA would keep the standby's (empty) CUDA_VISIBLE_DEVICES: the handover could not give it its GPUs.
        _not_ready(attempt_dir, rank, f"CUDA was initialised while preparing ({touched}); a standby must leave that "
                   "to the handover, which names the GPUs: the job restarts cold")
        return EXIT_EXCEPTION
    announce_ready(attempt_dir, rank, user_module_mtimes(Path(cfg.workdir or os.getcwd())))
    cache = prepared.checkpoint_cache = checkpoint_cache(args, cfg, attempt_dir)
    handover = wait_for_handover(attempt_dir, idle=cache.refresh)
    if handover is None:
        return EXIT_EXCEPTION  # the monitor is gone: nobody would record this attempt
    started_at = time.time()
    fit_args = become(handover, parser, attempt_dir)
    if fit_args is None:
        return EXIT_EXCEPTION
    return run_attempt(fit_args, started_at, prepared=prepared)


def announce_ready(attempt_dir: Path, rank: RankInfo, modules: dict[str, float]) -> None:
    """This rank's start-up is done: its ready file (the daemon waits for every rank's)."""
    write_json_atomic(attempt_dir / ready_file_name(rank.rank, rank.world_size), {
        "pid": os.getpid(), "rank": rank.rank, "ready_at": time.time(), "modules": modules,
    })


def become(handover: Handover, parser: argparse.ArgumentParser, attempt_dir: Path) -> argparse.Namespace | None:
    """Turn this standby (rank) into the attempt ``handover`` names: environment, arguments, the job's lock.

    None (and a line on stderr) when it must not fit: the handover is for another
    attempt dir, or the lock stayed held (a trainer of the previous attempt lives).
    """
    lock_fd = inherited_lock_fd(handover.lock_path) if handover.lock_path else None  # before the environment
    apply_handover_environment(handover)
    fit_args = parser.parse_intermixed_args(handover.argv)
    if Path(fit_args.attempt_dir).absolute() != attempt_dir:
        print(f"[trainer] handover for {fit_args.attempt_dir}, standby of {attempt_dir}: refusing", file=sys.stderr)
        return None
    # No lock named (Slurm: no monitor holds one; its batch script runs one step at a time): none to take.
    if handover.lock_path and not take_lock(handover.lock_path, fd=lock_fd):
        print(f"[trainer] the job's lock {handover.lock_path} stayed held: another trainer of this job lives",
              file=sys.stderr, flush=True)
        return None
    return fit_args


def apply_handover_environment(handover: Handover, environ: Any = os.environ) -> None:
    """The attempt's environment, as a cold launch gives it, under this rank's own variables.

    A cold rank's environment is the attempt's with the monitor's rank variables on
    top (``rank_environment``); the handover's environment is the attempt's, the same
    for every rank, so the rank variables are put back after it. ``MASTER_PORT`` is
    the one the daemon chose for this attempt.
    """
    own = {key: environ[key] for key in RANK_ENV_KEYS if key in environ}
    environ.update(handover.env)
    environ.update(own)
    if handover.master_port is not None:
        environ["MASTER_PORT"] = str(handover.master_port)


def prepare(cfg: DictConfig, source: str) -> PreparedRun:
    """Everything that does not depend on the checkpoint, the GPUs or the W&B run: imports, model, data."""
    from trainer.fit import PreparedRun, prepare_run  # torch and Lightning: after the config's env is applied

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


def checkpoint_cache(args: argparse.Namespace, cfg: DictConfig, attempt_dir: Path) -> CheckpointCache:
    """The cache of the checkpoint the next attempt will likely resume from (``trainer.checkpoint_cache``)."""
    from trainer.checkpoint_cache import CheckpointCache, limit_from_env  # Lightning (prepare loaded it)

    checkpoint_dir = Path(args.checkpoint_dir).absolute() if args.checkpoint_dir else attempt_dir / "checkpoints"
    return CheckpointCache(checkpoint_dir, str(cfg.supervision.resume_from), limit_from_env())


def user_module_mtimes(workdir: Path) -> dict[str, float]:
    """The modules imported from the job's workdir (not installed packages), with their mtimes.

    The daemon compares them before a promotion: a standby that imported code
    since edited on disk is stale, and a cold start runs the new code instead.
    A module a zygote imported for us has the mtime it had then (``INHERITED_MODULE_MTIMES``).
    """
    root = str(workdir.absolute()) + os.sep
    found: dict[str, float] = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if not path or not path.startswith(root) or "site-packages" in path:
            continue
        if path in INHERITED_MODULE_MTIMES:
            found[path] = INHERITED_MODULE_MTIMES[path]
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
            port = data.get("master_port")
            return Handover(argv=[str(a) for a in data["argv"]], env={str(k): str(v) for k, v in data["env"].items()},
                            lock_path=str(data["lock_path"]), master_port=int(port) if port else None)
        except FileNotFoundError:
            pass
        if os.getppid() != parent:
            return None
        time.sleep(HANDOVER_POLL_S)


def inherited_lock_fd(lock_path: str) -> int | None:
    """The job's lock file as the daemon opened it for this standby (``LOCK_FD_ENV``), or None.

    Only an fd that is still that very file counts (same device and inode).
    """
    raw = os.environ.get(LOCK_FD_ENV, "")
    if not raw.isdigit():
        return None
    try:
        held, named = os.fstat(int(raw)), os.stat(lock_path)
    except OSError:
        return None
    return int(raw) if (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino) else None


def take_lock(lock_path: str, wait_s: float = LOCK_WAIT_S, fd: int | None = None) -> bool:
    """Hold the job's lock for the rest of this process's life (the kernel drops it when we die).

    ``fd``: the lock file the daemon opened once for the whole standby (its monitor and
    every rank inherited that one open file). An flock belongs to the open file, not to
    a process, so the first rank to lock it holds it for all of them, and every other
    rank's flock on it returns at once, while any other open file of the lock (the
    previous attempt's monitor and ranks) makes it wait. So each rank proves for itself,
    before it fits, that no trainer of the previous attempt lives, and the lock is then
    held, as a cold attempt's is, until the monitor and every rank are gone. Separate
    opens (``fd`` None: a standby started without one) would make the ranks exclude
    each other.
    """
    own = fd is None
    if own:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    assert fd is not None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True  # fd stays open on purpose
        except BlockingIOError:
            if time.monotonic() >= deadline:
                if own:
                    os.close(fd)
                return False
            time.sleep(0.01)


def _not_ready(attempt_dir: Path, rank: RankInfo, message: str) -> None:
    print(f"[trainer] standby cannot prepare: {message}", file=sys.stderr, flush=True)
    write_json_atomic(attempt_dir / ready_file_name(rank.rank, rank.world_size),
                      {"pid": os.getpid(), "rank": rank.rank, "failed": message})
