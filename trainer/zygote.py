"""``python -m trainer.zygote``: one job's fork server for its standby trainers.

It pays a standby's imports (torch, Lightning, W&B, the user's modules) once per
job, then forks each standby's attempt monitor, and that monitor's ranks, from
itself, so a takeover does not slow the training with a new standby's imports.
Protocol (one JSON line each way; started by ``supervisor/runners/zygote.py``)::

    -> {"ready": true, "pid": P, "modules": {path: mtime}}   once, after the imports
       or {"failed": why}                                    (and it exits)
    <- {"attempt_dir": D, "cwd": C, "env": {...}, "lock_path": L, "monitor_args": [...], "command": [...]}
    -> {"attempt_dir": D, "pid": P}                          the standby's monitor, forked
       or {"attempt_dir": D, "error": why}

Forking is safe because the zygote never computes: no thread but OpenBLAS's
(``fork_unsafe``), CUDA never touched, no OpenMP pool yet. It exits when its
stdin closes. See docs/architecture.md, "The zygote".
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import runpy
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from threadpoolctl import threadpool_info

from supervisor.errors import ConfigError
from supervisor.jobfiles.standbyfiles import LOCK_FD_ENV, NICE_ENV, ROOM_ARG
from trainer.attempt import exit_now, flush_streams
from trainer.build import resolve_job
from trainer.cli import build_parser
from trainer.job import load_config
from trainer.proctitle import set_command_line, set_environment_block
from trainer.ranks import rank_from_env
from trainer.standby import INHERITED_MODULE_MTIMES, cuda_touched, user_module_mtimes

PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass
class ForkedRank:
    """A rank forked by a zygote-born monitor: what ``rank_group.RankGroup`` reads of a ``Popen``."""

    pid: int
    returncode: int | None = None


def main(argv: Sequence[str] | None = None) -> int:
    """Import the job's standby modules, say so, then fork a standby monitor per request until stdin closes."""
    own = argparse.ArgumentParser(prog="python -m trainer.zygote", allow_abbrev=False)
    own.add_argument("--reply-fd", type=int, required=True)
    own.add_argument("--module", default="trainer", help="the trainer module its standbys run (python -m MODULE)")
    own.add_argument("--die-with", type=int, help="the daemon's pid: the kernel kills this zygote when it dies")
    args, trainer_argv = own.parse_known_args([a for a in (sys.argv[1:] if argv is None else argv) if a != ROOM_ARG])
    if args.die_with is not None:
        die_with(args.die_with)
    reply = os.fdopen(args.reply_fd, "w", buffering=1)
    base_nice = os.getpriority(os.PRIO_PROCESS, 0)
    nice = os.environ.get(NICE_ENV)
    if nice:  # background work, like an exec'd standby's start-up; each forked monitor takes base_nice back
        os.nice(int(nice))
    try:
        modules = import_job(trainer_argv) if args.module == "trainer" else {}  # another module: imported at its run
        why = fork_unsafe()
    except ConfigError as exc:
        why = exc.message
    except Exception as exc:  # the daemon falls back to exec'd standbys for this job
        why = f"{type(exc).__name__}: {exc}"
    if why:
        _say(reply, {"failed": why})
        return 1
    _say(reply, {"ready": True, "pid": os.getpid(), "modules": modules})
    gc.collect()
    gc.freeze()  # the imports' objects leave the collector's walks, which would write to (and copy) their pages
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        request = json.loads(line)
        why = fork_unsafe()
        if why:
            _say(reply, {"attempt_dir": request["attempt_dir"], "error": why})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:
            _say(reply, {"attempt_dir": request["attempt_dir"], "error": f"fork: {exc}"})
            continue
        if pid == 0:
            reply.close()
            run_monitor(request, modules, base_nice)  # never returns
        _say(reply, {"attempt_dir": request["attempt_dir"], "pid": pid})
    return 0  # stdin closed: the daemon is gone (or dropped us)


def import_job(trainer_argv: Sequence[str]) -> dict[str, float]:
    """Import what a standby of this job imports; the user's modules, with their mtimes."""
    args = build_parser().parse_intermixed_args(list(trainer_argv))
    cfg = load_config(args.config, args.overrides)
    # Imported here, once the config's env is applied, and kept for every fork:
    import supervisor.processes.attempt_monitor  # noqa: F401 - what each forked monitor runs
    import trainer.checkpoint_cache  # the standby's cache of the resume checkpoint
    import trainer.fit  # noqa: F401 - torch and Lightning: the slow part

    resolve_job(cfg, args.config)  # the user's model and data modules (imported, not built)
    if str(cfg.logger.wandb.mode) != "disabled":
        import pytorch_lightning.loggers.wandb  # noqa: F401
        import wandb  # noqa: F401
    touched = cuda_touched()
    if touched:
        raise RuntimeError(f"CUDA was initialised by the imports ({touched}): a fork could not get its own GPUs")
    return user_module_mtimes(Path(cfg.workdir or os.getcwd()))


def die_with(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent, the daemon, dies (``PR_SET_PDEATHSIG``).

    The closed request pipe ends a zygote that reads it, not one stuck in an import (a filesystem
    that does not answer): that one would stay behind for ever. Set here, before the job's imports,
    not in a ``preexec_fn``: that runs Python between fork and exec in the daemon's threaded process,
    where the docs warn it can deadlock (and the daemon's Popen would wait on it). Forked monitors
    clear it (``fork`` does), so a standby still outlives the zygote.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the daemon died before the line above
        os._exit(1)


def fork_unsafe(task_dir: str = "/proc/self/task") -> str | None:
    """Why forking this process now would be unsafe (a thread we cannot account for), or None.

    A fork copies only the calling thread: a lock another thread holds stays held for
    ever in the child. The threads allowed are OpenBLAS's (numpy and scipy each load
    one, and it starts its workers at load): OpenBLAS stops them before any fork
    (its ``pthread_atfork`` handler) and starts them again when next used, in the
    child too. Counted through ``threadpoolctl``, which finds every BLAS/OpenMP
    library loaded and its thread count.
    """
    try:
        threads = len(os.listdir(task_dir))
    except OSError:
        threads = threading.active_count()
    allowed = 1 + openblas_workers()
    if threads > allowed:
        return (f"the zygote runs {threads} threads, {allowed} accounted for (the main one and OpenBLAS's): "
                "an import started one, and a fork would copy only the calling thread")
    return None


def openblas_workers() -> int:
    """Worker threads the loaded OpenBLAS libraries (with their own pthreads pool) may run now."""
    return sum(max(0, int(pool["num_threads"]) - 1) for pool in threadpool_info()
               if pool.get("internal_api") == "openblas" and pool.get("threading_layer") == "pthreads")


def run_monitor(request: dict[str, Any], modules: dict[str, float], base_nice: int) -> None:
    """In the forked child: become the standby's attempt monitor (``processes.attempt_monitor``), then exit."""
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # a session of its own, as spawn_attempt_monitor gives an exec'd monitor
        if os.getpriority(os.PRIO_PROCESS, 0) != base_nice:
            try:  # the monitor runs at the daemon's priority; its ranks lower their own (trainer.standby.serve)
                os.setpriority(os.PRIO_PROCESS, 0, base_nice)
            except PermissionError:
                pass
        attempt_dir = Path(request["attempt_dir"])
        attempt_dir.mkdir(parents=True, exist_ok=True)
        _redirect(attempt_dir / "monitor.log", attempt_dir / "monitor.log")
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in request["env"].items()})
        lock_fd = os.open(request["lock_path"], os.O_RDWR | os.O_CREAT, 0o600)  # not locked: the ranks lock it
        os.environ[LOCK_FD_ENV] = str(lock_fd)
        monitor_argv = ["--attempt-dir", str(attempt_dir), "--cwd", str(request["cwd"]), "--lock-fd", str(lock_fd),
                        *request["monitor_args"], "--", *request["command"]]
        if not set_command_line([sys.executable, "-m", "supervisor.processes.attempt_monitor", *monitor_argv]):
            raise RuntimeError("the monitor's command line does not fit in the zygote's argv room")
        if not set_environment_block(os.environ):
            raise RuntimeError("the monitor's environment does not fit in the zygote's environment room")
        INHERITED_MODULE_MTIMES.update(modules)  # the code in memory is as old as the zygote's
        from supervisor.processes.attempt_monitor import main as monitor_main  # import_job preloaded it (trainer)

        code = monitor_main(monitor_argv, launch=fork_rank)
    except BaseException:  # a forked child must never return into the zygote's loop
        traceback.print_exc()
    # As an exec'd monitor leaves (attempt_monitor's __main__): at once, no atexit handlers (the zygote's
    # imports registered some): the daemon hears of the attempt's end through this exit.
    flush_streams()
    os._exit(code)


def fork_rank(command: list[str], cwd: str, env: dict[str, str] | None, stdout: int, stderr: int, pgid: int,
              lock_fd: int | None) -> ForkedRank:
    """``attempt_monitor``'s rank launcher: fork, and run ``command`` (``python -m trainer ...``) in the child."""
    del lock_fd  # a fork keeps every fd: the rank holds the lock's open file as an exec'd one does
    pid = os.fork()
    if pid:
        try:  # set on both sides: the monitor may signal the group before the child has run at all
            os.setpgid(pid, pgid or pid)
        except OSError:
            pass
        return ForkedRank(pid)
    code = 1
    try:
        try:
            os.setpgid(0, pgid or 0)
        except OSError:
            pass
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)  # what an exec would give it: the monitor's are Python handlers
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.set_wakeup_fd(-1)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if not (set_command_line(command) and set_environment_block(os.environ)):
            raise RuntimeError("the rank's command line or environment does not fit in the zygote's room")
        code = _run_trainer(command)
    except BaseException:  # as in run_monitor: never return into the monitor's loop
        traceback.print_exc()
    _leave(code)
    raise AssertionError("unreachable")  # for the type checker: _leave exits


def _run_trainer(command: list[str]) -> int:
    """``python -m MODULE ARGS`` in this process (``runpy``, as the interpreter runs ``-m``); its exit code."""
    if list(command[1:2]) != ["-m"] or len(command) < 3:
        raise RuntimeError(f"a zygote runs python -m MODULE only, not {command[:3]}")
    sys.argv = [command[2], *command[3:]]  # run_module puts the module's file in sys.argv[0]
    try:
        runpy.run_module(command[2], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _leave(code: int) -> None:
    """Exit a forked rank: the ``atexit`` handlers (W&B, logging), the streams, then ``os._exit``.

    Never the interpreter's own exit: the monitor's and zygote's stack, below us, is not ours to unwind.
    """
    if rank_from_env().multi:  # as trainer/__main__.py: torch.distributed's teardown would hang on a dead peer
        flush_streams()
        os._exit(code)
    exit_now(code)


def _redirect(stdout: Path, stderr: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd, path in ((1, stdout), (2, stderr)):
        out = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        os.dup2(out, fd)
        os.close(out)


def _reap(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD: reap the monitors we forked that have ended (their records are their own to write)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _say(reply: Any, message: dict[str, Any]) -> None:
    reply.write(json.dumps(message) + "\n")


if __name__ == "__main__":
    sys.exit(main())
