"""A fake trainer for fast process-level tests: the real trainer's contracts, no torch.

Run by the daemon as ``python -m fake_trainer`` (tests put this folder on
PYTHONPATH and set the daemon's ``trainer_module``). It speaks the same CLI and
writes the same files as ``python -m trainer``: heartbeat, manifest with real
zip checkpoints, exit record, graceful SIGTERM. Its behaviour comes from the
job config's ``model.init_args``:

    steps: 20            total steps
    step_time: 0.02      seconds per step
    ckpt_every: 5        save a checkpoint every N steps: ``step=N.ckpt`` (top-k), then ``last.ckpt`` at the same
                         step, as Lightning's ModelCheckpoint(save_last=True) does; monitor "loss", mode min
    worse_every: 2       every 2nd scheduled save scores worse than the one before it, so the best checkpoint
                         is not the newest (see ``score_at``); 0: score 1 / step, later is always better
    faults_on: [1]       the attempts on which the faults below apply
    crash_at: null       raise at this step (exit record "exception", exit 1)
    die_at: null         SIGKILL itself at this step (no record)
    hang_at: null        stop making progress at this step (sleep forever, no heartbeat)
    nan_at: null         the loss turns NaN at this step: the attempt diverges as the real trainer's does (exit
                         record ``diverged`` with the divergence, exit 3, rank 0 appends a manifest ``unusable``
                         line from that step; nothing is saved at the step it is detected)
    nan_patience: 0      seen this many steps after ``nan_at``, as a spike (check ``loss_spike``, its patience): the
                         saves in between happen, and only the ``unusable`` line undoes them
    nan_every_attempt: false  the NaN comes back each time ``nan_at`` is reached, on every attempt (a persistent
                         divergence: the job ends failed/diverged after ``supervision.divergence.max_rollbacks``);
                         false: only on the ``faults_on`` attempts (transient: the rollback gets past it)
    ignore_sigterm: false
    ignore_deadline: false  do not stop by itself at --deadline (the daemon's budget stop must do it)
    spawn_child: false   start a child process in our group (an orphan-to-be, like a DataLoader worker)
    check_error: null    make --check fail with this message
    heartbeat_every: 0   seconds between heartbeats (the real trainer: 2 s; 0 = every step)
    val_every: 0         a "validation" every N steps: a metrics.jsonl line with val_loss = objective(x, y) + 1/k
    save_last: true      write last.ckpt (as above, and at the end of the fit)
    hold_until: null     a path: before its last step, wait (beating) until that file exists, so a test can
                         let the job end only once it has seen what it waits for (a daemon restart's adoption)
    standby_prepare_s: 0.3  ``--standby``: the "imports" before the ready file
    x: 0.0, y: 0.0       the hyperparameters val_loss is a known function of (optimum x=0.3, y=0.7; see objective)

A save out of the schedule (SIGTERM's ``signal``, the deadline's or SIGUSR1's ``last.ckpt``, the final one
at max_steps) carries the score of the last scheduled save, as the real trainer's carries the last
validated value (none before the first).

Under Slurm with several ranks (``SLURM_PROCID`` > 0) a rank other than 0 only
follows: it waits for rank 0's exit record (then exits 0) or a signal, like a DDP
rank that does no file work.

``--standby`` plays a standby trainer (one per rank) with the real trainer's
protocol (``trainer.standby``: ready file, handover, environment, the job's lock),
then trains as the attempt it was handed; each rank records the environment it
trains with in ``handover-env.rank<R>.json``.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.jobfiles.layout import EXIT_DIVERGED, AttemptLayout, manifest_path
from supervisor.jobfiles.manifest import CheckpointEntry, abandon_after, record_save, record_unusable

_stop_signal: int | None = None
_checkpoint_requested = False


def _on_term(signum: int, frame: object) -> None:
    global _stop_signal
    _stop_signal = signum


def _on_usr1(signum: int, frame: object) -> None:
    global _checkpoint_requested
    _checkpoint_requested = True


def objective(x: float, y: float) -> float:
    """The fake's final-ish validation loss: a bowl with its minimum 0 at x=0.3, y=0.7 (sweep tests know it)."""
    return (x - 0.3) ** 2 + (y - 0.7) ** 2


def _validate(layout: AttemptLayout, step: int, every: int, x: float, y: float) -> None:
    """Log val_loss like the real trainer's metrics.jsonl: it falls as 1/k towards objective(x, y)."""
    k = step // every
    line = {"time": time.time(), "step": step, "epoch": k, "metrics": {"val_loss": objective(x, y) + 1.0 / k}}
    with open(layout.metrics, "a") as f:
        f.write(json.dumps(line) + "\n")


def score_at(step: int, every: int, worse_every: int) -> float | None:
    """The monitor's value at ``step``: that of the last scheduled save (the last "validation"), mode min.

    Scheduled save k (step k * every) scores 1 / step, but 3 / step when ``worse_every`` divides k: worse
    than save k - 1 (3 (k - 1) > k for k >= 2), so the best live checkpoint is then an older one. Every
    other save still improves on all before it, so a job resumed from its best goes on making progress.
    """
    k = step // every if every > 0 else 0
    if k < 1:
        return None
    scheduled = k * every
    return (3.0 if worse_every and k % worse_every == 0 else 1.0) / scheduled


def _save(ckpt_dir: Path, step: int, attempt: int, score: float | None, kind: str = "topk") -> str:
    name = "last.ckpt" if kind != "topk" else f"step={step}.ckpt"
    path = ckpt_dir / name
    tmp = ckpt_dir / f".{name}.tmp"
    with zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr("archive/data.pkl", f"step={step}".encode() * 64)
    os.replace(tmp, path)
    record_save(manifest_path(ckpt_dir), CheckpointEntry(
        path=str(path), step=step, epoch=0, monitor="loss", score=score, mode="min",
        size=path.stat().st_size, time=time.time(), attempt=attempt, kind=kind, finite=True))
    return str(path)


def _diverge(exit_path: Path, ckpt_dir: Path, bad_step: int, step: int, attempt: int, rank: int,
             spike: bool) -> int:
    """End the attempt as the real trainer does when the loss diverged at ``bad_step`` (seen at ``step``)."""
    check = "loss_spike" if spike else "non_finite_loss"
    why = f"diverged at step {bad_step}: " + ("loss spike (50 against a median of 0.1)" if spike
                                               else "non-finite loss (nan)")
    if rank == 0:  # every checkpoint saved at the bad step or later holds bad weights
        record_unusable(manifest_path(ckpt_dir), bad_step, attempt, why)
    write_exit_record(exit_path, ExitRecord(
        status="diverged", time=time.time(), pid=os.getpid(), global_step=step, message=why,
        divergence={"step": bad_step, "check": check, "value": 50.0 if spike else "nan",
                    "baseline": 0.1 if spike else None,
                    "rank": rank}))
    print(f"[trainer] {why}; no checkpoint of these weights was saved", file=sys.stderr, flush=True)
    return EXIT_DIVERGED


def _read_step(ckpt: str) -> int:
    with zipfile.ZipFile(ckpt) as zf:
        return int(zf.read("archive/data.pkl").decode().split("step=")[1])


def _follow_rank_zero(layout: AttemptLayout) -> int:
    """A rank > 0: alive until rank 0 wrote its exit record (exit 0) or a stop signal arrives."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    print(f"fake trainer rank {os.environ.get('SLURM_PROCID')} on {os.environ.get('SLURMD_NODENAME')}", flush=True)
    while not layout.exit_record.exists():
        if _stop_signal is not None:
            return 128 + _stop_signal
        time.sleep(0.05)
    return 0


def _standby(args: argparse.Namespace, parser: argparse.ArgumentParser,
             prepare_s: float) -> argparse.Namespace | None:
    """Wait as a standby (the real protocol, a sleep for the imports); the arguments of the attempt handed over."""
    from trainer.ranks import rank_from_env
    from trainer.standby import announce_ready, become, wait_for_handover

    attempt_dir = Path(args.attempt_dir).absolute()
    attempt_dir.mkdir(parents=True, exist_ok=True)
    rank = rank_from_env()
    time.sleep(prepare_s)
    announce_ready(attempt_dir, rank, {})
    handover = wait_for_handover(attempt_dir)
    if handover is None:
        return None
    handed = become(handover, parser, attempt_dir)
    if handed is not None:
        keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "ML_SUPERVISOR_ATTEMPT")
        (attempt_dir / f"handover-env.rank{rank.rank}.json").write_text(json.dumps(
            {"pid": os.getpid(), "time": time.time(), **{k: os.environ.get(k) for k in keys}}))
    return handed


def main(argv: list[str] | None = None) -> int:
    global _checkpoint_requested
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", required=True)
    parser.add_argument("--attempt-dir")
    parser.add_argument("--checkpoint-dir")
    parser.add_argument("--ckpt")
    parser.add_argument("--attempt", type=int, default=1)
    parser.add_argument("--restarts", type=int, default=0)
    parser.add_argument("--deadline", type=float)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--standby", action="store_true")
    args, _ = parser.parse_known_args(argv)
    cfg = OmegaConf.load(args.config)
    opts: dict[str, Any] = {"steps": 20, "step_time": 0.02, "ckpt_every": 5, "faults_on": [1], "crash_at": None,
                            "die_at": None, "hang_at": None, "ignore_sigterm": False, "ignore_deadline": False,
                            "spawn_child": False, "check_error": None, "heartbeat_every": 0.0,
                            "val_every": 0, "x": 0.0, "y": 0.0, "standby_prepare_s": 0.3, "worse_every": 2,
                            "save_last": True, "hold_until": None, "nan_at": None, "nan_patience": 0,
                            "nan_every_attempt": False}
    opts.update(OmegaConf.to_container(cfg.model.init_args) or {})
    if args.check:
        if opts["check_error"]:
            print(f"{args.config}: model.class_path: {opts['check_error']}", file=sys.stderr)
            return 2
        return 0
    if args.standby:
        handed = _standby(args, parser, float(opts["standby_prepare_s"]))
        if handed is None:
            return 1
        args = handed
    layout = AttemptLayout(Path(args.attempt_dir))
    layout.dir.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("SLURM_PROCID", "0")) != 0:
        return _follow_rank_zero(layout)
    # Started as one of several ranks (the monitor's RANK): its own files, and rank 0 alone saves.
    rank = int(os.environ.get("RANK", "0"))
    heartbeat_path, exit_path = layout.heartbeat_of(rank), layout.exit_record_of(rank)
    ckpt_dir = Path(args.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if opts["ignore_sigterm"] else _on_term)
    signal.signal(signal.SIGUSR1, _on_usr1)  # like the real trainer: a checkpoint now, and go on
    stacks = open(layout.stacks_of(rank), "a")  # noqa: SIM115 - faulthandler writes to it until we exit
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True, chain=False)
    faulty = args.attempt in list(opts["faults_on"])
    step = 0
    if args.ckpt:
        if rank == 0:
            abandon_after(manifest_path(ckpt_dir), args.ckpt, args.attempt)
        step = _read_step(args.ckpt)
    print(f"fake trainer attempt {args.attempt} from step {step}", flush=True)
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}", flush=True)
    if opts["spawn_child"]:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    every, worse_every = int(opts["ckpt_every"]), int(opts["worse_every"])

    def score() -> float | None:
        return score_at(step, every, worse_every)

    saved_at = step  # the step of the newest save (the resume point counts: already on disk)
    started = time.time()
    beat = Heartbeat(pid=os.getpid(), attempt=args.attempt, time=started, started_at=started, phase="train",
                     step=step)
    write_heartbeat(heartbeat_path, beat)
    while step < opts["steps"]:
        if _stop_signal is not None:
            path = _save(ckpt_dir, step, args.attempt, score(), kind="signal") if step and rank == 0 else None
            write_exit_record(exit_path, ExitRecord(
                status="signal", time=time.time(), pid=os.getpid(), global_step=step,
                signal=signal.Signals(_stop_signal).name, checkpoint=path))
            return 128 + _stop_signal
        if args.deadline and not opts["ignore_deadline"] and time.time() >= args.deadline - 0.2:
            if rank == 0:
                _save(ckpt_dir, step, args.attempt, score(), kind="last")
            write_exit_record(exit_path, ExitRecord(
                status="completed", time=time.time(), pid=os.getpid(), global_step=step, reason="deadline"))
            return 0
        if opts["hold_until"] and step >= opts["steps"] - 1 and not os.path.exists(opts["hold_until"]):
            time.sleep(0.05)
            if time.time() - beat.time >= 0.5:
                beat.time = time.time()
                write_heartbeat(heartbeat_path, beat)
            continue
        time.sleep(opts["step_time"])
        step += 1
        if faulty and step == opts["hang_at"]:
            while True:
                time.sleep(3600)
        if faulty and step == opts["die_at"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if faulty and step == opts["crash_at"]:
            write_exit_record(exit_path, ExitRecord(
                status="exception", time=time.time(), pid=os.getpid(), global_step=step,
                exception={"type": "RuntimeError", "message": f"boom at step {step}", "traceback": ""}))
            print(f"RuntimeError: boom at step {step}", file=sys.stderr, flush=True)
            return 1
        if (faulty or opts["nan_every_attempt"]) and opts["nan_at"] is not None \
                and step == int(opts["nan_at"]) + int(opts["nan_patience"]):
            return _diverge(exit_path, ckpt_dir, int(opts["nan_at"]), step, args.attempt, rank,
                            spike=int(opts["nan_patience"]) > 0)
        if _checkpoint_requested:
            _checkpoint_requested = False
            if rank == 0:
                _save(ckpt_dir, step, args.attempt, score(), kind="last")
                saved_at = step
        if opts["val_every"] and step % opts["val_every"] == 0:
            _validate(layout, step, int(opts["val_every"]), float(opts["x"]), float(opts["y"]))
        if step % every == 0 and rank == 0:
            _save(ckpt_dir, step, args.attempt, score())
            if opts["save_last"]:
                _save(ckpt_dir, step, args.attempt, score(), kind="last")
            saved_at = step
        if time.time() - beat.time >= opts["heartbeat_every"]:
            beat.time, beat.step = time.time(), step
            beat.step_time = beat.max_step_time = opts["step_time"]
            write_heartbeat(heartbeat_path, beat)
    if rank == 0 and opts["save_last"] and step != saved_at:  # the real trainer's save at the end of the fit
        _save(ckpt_dir, step, args.attempt, score(), kind="last")
    write_exit_record(exit_path, ExitRecord(status="completed", time=time.time(), pid=os.getpid(),
                                            global_step=step, reason="max_steps"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
