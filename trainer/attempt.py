"""One attempt's lifecycle around the fit: start it, record how it ended, leave.

``run_attempt`` installs the signal handlers and writes the first heartbeat,
runs the fit (``trainer.fit``, imported only then), and on every way out but
SIGKILL closes W&B and writes the exit record (``finish``); a failure or a stop
leaves at once (``exit_now``). Torch-free at import: the handlers and the first
heartbeat are in place before the slow torch import starts.
"""

from __future__ import annotations

import argparse
import atexit
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from supervisor.errors import ConfigError
from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.layout import EXIT_COMPLETED, EXIT_CONFIG_ERROR, EXIT_DIVERGED, EXIT_EXCEPTION, AttemptLayout
from trainer.divergence import Diverged
from trainer.job import load_config
from trainer.progress import HeartbeatWriter, interval_from_env
from trainer.ranks import RankInfo, rank_from_env
from trainer.signals import SignalState, Terminated, exit_code_for
from trainer.wandb_run import finish_wandb

if TYPE_CHECKING:
    from trainer.fit import PreparedRun, RunState

TRACEBACK_TAIL = 4000
# Set for the user's code (and the example's fault injection) to read.
ATTEMPT_ENV = "ML_SUPERVISOR_ATTEMPT"
RESTARTS_ENV = "ML_SUPERVISOR_RESTARTS"
ATTEMPT_DIR_ENV = "ML_SUPERVISOR_ATTEMPT_DIR"
CHECKPOINT_DIR_ENV = "ML_SUPERVISOR_CHECKPOINT_DIR"


def run_attempt(args: argparse.Namespace, started_at: float, prepared: PreparedRun | None = None) -> int:
    """One attempt: fit, then write the exit record whatever happened, and return the exit code.

    ``args``: ``python -m trainer``'s (``trainer.cli.build_parser``). ``prepared``: what a
    standby built before its handover (its config, model and data module).
    """
    attempt_dir = Path(args.attempt_dir).absolute()
    attempt_dir.mkdir(parents=True, exist_ok=True)
    layout = AttemptLayout(attempt_dir)
    rank = rank_from_env()
    checkpoint_dir = Path(args.checkpoint_dir).absolute() if args.checkpoint_dir else attempt_dir / "checkpoints"
    signals = SignalState(layout.stacks_of(rank.rank))
    # Live curves come from rank 0 alone: the other ranks' metrics are their shard's.
    heartbeat = HeartbeatWriter(layout.heartbeat_of(rank.rank), layout.metrics if rank.rank == 0 else None,
                                attempt=args.attempt, started_at=started_at, interval=interval_from_env(),
                                rank=rank.rank)
    state: RunState | None = None
    record = ExitRecord(status="completed", time=0.0, pid=os.getpid(), rank=rank.rank)
    try:
        # Inside the try from the handlers' installation on: a SIGTERM from here on raises
        # Terminated, which must become an exit record and exit 143, never a traceback.
        signals.install()
        heartbeat.write()  # "setup": the process is alive before the slow imports
        os.environ.update({
            ATTEMPT_ENV: str(args.attempt),
            RESTARTS_ENV: str(args.restarts),
            ATTEMPT_DIR_ENV: str(attempt_dir),
            CHECKPOINT_DIR_ENV: str(checkpoint_dir),
        })
        if os.environ.get("CUDA_VISIBLE_DEVICES"):  # which GPUs it has (a standby learns it at the handover)
            print(f"[trainer] attempt {args.attempt}: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}",
                  file=sys.stderr, flush=True)
        cfg = load_config(args.config, args.overrides) if prepared is None else prepared.cfg
        # torch and Lightning load here, after the config's env (CUDA_VISIBLE_DEVICES, thread counts) is applied
        # and with the signal handlers and the first heartbeat already in place.
        from trainer.fit import FitOptions, RunState, run_fit

        heartbeat.mark("imports_done")

        state = RunState()
        opts = FitOptions(attempt_dir=attempt_dir, checkpoint_dir=checkpoint_dir, ckpt=args.ckpt,
                          attempt=args.attempt, restarts=args.restarts, deadline=args.deadline, rank=rank,
                          skip_batches=args.skip_batches, lr_scale=args.lr_scale,
                          checkpoint_every=args.checkpoint_every, devices=args.devices,
                          accumulate=args.accumulate_grad_batches)
        if rank.multi:
            opts.on_failure = lambda exc: write_early_record(exc, signals, state, layout, rank)
        record.reason = run_fit(cfg, args.config, opts, signals, heartbeat, state, prepared)
        code = EXIT_COMPLETED
    except ConfigError as exc:
        print(exc.message, file=sys.stderr, flush=True)
        record.status, record.message = "config_error", exc.message
        code = EXIT_CONFIG_ERROR
    except BaseException as exc:
        signals.finishing = True
        code = describe_failure(exc, signals, state, record, report=True)
    signals.finishing = True  # from here on a late signal only records
    code = finish(record, code, state, heartbeat, layout, rank)
    if code != EXIT_COMPLETED and not rank.multi:  # several ranks leave in __main__, the same way
        exit_now(code)
    return code


def exit_now(code: int) -> None:
    """Leave at once after a failure or a stop, skipping the interpreter's teardown.

    The job's lock (and so the next attempt, or the standby's promotion) waits for
    this process to be gone, and tearing down an interpreter with torch loaded
    takes seconds and saves nothing: the exit record and the checkpoints are
    already durable. The ``atexit`` handlers still run (W&B's teardown, which
    waits for wandb-core to write the run file; ``logging.shutdown``; the user's;
    multiprocessing's, which ends DataLoader workers), then stdout and stderr are
    flushed. Skipped: finalisers of objects still alive (a user's file left open).
    """
    atexit._run_exitfuncs()
    flush_streams()
    os._exit(code)


def flush_streams() -> None:
    """Flush stdout and stderr before an ``os._exit`` (which skips the interpreter's own flush)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: nothing more can reach it


def describe_failure(exc: BaseException, signals: SignalState, state: RunState | None, record: ExitRecord, *,
                     report: bool = False) -> int:
    """Fill ``record`` for a fit that raised ``exc``; returns the exit code (``report``: tell stderr too)."""
    if signals.stop_signal is None and type(exc).__name__ == "SIGTERMException":
        # A multi-rank stop agreed on because another rank got SIGTERM: this rank stops for the same signal.
        signals.stop_signal = signal.SIGTERM
    if signals.stop_signal is None and isinstance(exc, Diverged):
        record.status, record.message = "diverged", str(exc)
        record.divergence = exc.divergence.to_record()
        if report:
            print(f"[trainer] {exc}; no checkpoint of these weights was saved", file=sys.stderr, flush=True)
        return EXIT_DIVERGED
    if signals.stop_signal is None:
        if report:
            traceback.print_exception(exc)
        record.status = "exception"
        record.exception = describe_exception(exc)
        return EXIT_EXCEPTION
    # Stopped by a signal, whatever it raised on the way: Lightning's SIGTERMException,
    # our Terminated, KeyboardInterrupt, or an error the signal caused elsewhere (a
    # DataLoader worker killed by the same process-group SIGTERM).
    record.status, record.signal = "signal", signals.stop_signal_name
    if state is not None and state.checkpoint is not None:
        record.checkpoint = state.checkpoint.signal_checkpoint
    if not isinstance(exc, (Terminated, KeyboardInterrupt, SystemExit)):
        record.message = f"{type(exc).__name__}: {exc}".strip()
        if report:
            traceback.print_exception(exc)
    if report:
        print(f"[trainer] stopped by {record.signal}"
              + (f"; saved {record.checkpoint}" if record.checkpoint else "; no checkpoint saved"),
              file=sys.stderr, flush=True)
    return exit_code_for(signals.stop_signal)


def write_early_record(exc: BaseException, signals: SignalState, state: RunState | None, layout: AttemptLayout,
                       rank: RankInfo) -> None:
    """One of several ranks failed: its exit record now, before Lightning's teardown.

    When a rank dies the monitor stops the others within a second; a rank busy
    in teardown then would leave no record. ``finish`` rewrites it at the end
    (atomically: a reader sees one or the other).
    """
    if type(exc).__name__ == "SIGTERMException":
        return  # an agreed stop: every rank saves and ends its own way, nobody is rushed
    record = ExitRecord(status="exception", time=time.time(), pid=os.getpid(), rank=rank.rank)
    describe_failure(exc, signals, state, record)
    record.global_step, record.epoch = state.progress() if state is not None else (0, 0)
    write_exit_record(layout.exit_record_of(rank.rank), record)


def finish(record: ExitRecord, code: int, state: RunState | None, heartbeat: HeartbeatWriter,
           layout: AttemptLayout, rank: RankInfo | None = None) -> int:
    """Close W&B, mark the heartbeat done and write the exit record durably (the last thing before exit)."""
    finish_wandb(code)  # a no-op unless the fit imported W&B and opened a run
    step, epoch = state.progress() if state is not None else (0, 0)
    record.global_step, record.epoch = step, epoch
    try:
        heartbeat.set_phase("done", step=step, epoch=epoch)
    except OSError:
        pass  # the exit record matters more than the last beat
    record.time, record.pid = time.time(), os.getpid()
    write_exit_record(layout.exit_record_of(rank.rank if rank is not None else 0), record)
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def describe_exception(exc: BaseException) -> dict[str, str]:
    """The exit record's ``exception``: type, message and the traceback's last 4000 characters."""
    text = "".join(traceback.format_exception(exc))
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": text[-TRACEBACK_TAIL:],
    }
