"""The heartbeat writer: ``heartbeat.json`` and ``metrics.jsonl`` of one attempt.

Torch-free, so the CLI can report ``setup`` before the slow torch import. The
Lightning side (``trainer.callbacks.heartbeat``) feeds it steps and metrics; this
class decides when a write is due and does it. Writes are made only when the
training process's main thread asks, at batch ends and phase changes: a hung step
therefore stops the heartbeat, which is what the daemon's hang detection needs.
Each write runs on a writer thread with a deadline (``WRITE_TIMEOUT_S``): a disk
that does not answer loses beats, as a full one does, and never holds training.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

from supervisor.jobfiles.deadline import Deadlines
from supervisor.jobfiles.heartbeat import PHASES, Heartbeat, write_heartbeat

INTERVAL_ENV = "ML_SUPERVISOR_HEARTBEAT_INTERVAL"
DEFAULT_INTERVAL = 2.0
# Step intervals averaged for step_time: enough to smooth noise, few enough to follow a slow-down.
STEP_WINDOW = 32
# A heartbeat write that takes longer than this is given up (the disk does not answer); training goes on.
WRITE_TIMEOUT_S = 5.0
_WRITES = Deadlines(WRITE_TIMEOUT_S, max_threads=2)


def interval_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """The heartbeat period in seconds from ``ML_SUPERVISOR_HEARTBEAT_INTERVAL`` (default 2.0)."""
    raw = environ.get(INTERVAL_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


class HeartbeatWriter:
    """Keeps the attempt's progress and writes it, throttled, to ``heartbeat.json``.

    ``step_done`` is the per-step entry point and must stay cheap: a clock read,
    a deque append and a comparison, unless a write is due. ``read_progress``
    and ``read_metrics`` are called only when writing (reading Lightning
    metrics may sync a GPU).
    """

    def __init__(
        self,
        path: str | Path,
        metrics_path: str | Path | None,
        *,
        attempt: int,
        started_at: float,
        interval: float = DEFAULT_INTERVAL,
        pid: int | None = None,
        rank: int = 0,
    ) -> None:
        self.path = Path(path)
        self.rank = rank
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        self.attempt = attempt
        self.started_at = started_at
        self.interval = interval
        self.pid = pid if pid is not None else os.getpid()
        self.phase = "setup"
        self.step = 0
        self.epoch = 0
        self.metrics: dict[str, float] = {}
        self.read_metrics: Callable[[], dict[str, float]] | None = None
        # (global step, epoch) from the trainer, read only when a beat is written.
        self.read_progress: Callable[[], tuple[int, int]] | None = None
        self._intervals: deque[float] = deque(maxlen=STEP_WINDOW)
        self._computes: deque[float] = deque(maxlen=STEP_WINDOW)  # per step: batch start -> loss ready
        self._compute_best: float | None = None
        self._last_step_end: float | None = None
        self._last_write = float("-inf")
        self._last_metrics_line: tuple[int, dict[str, float]] | None = None
        self.marks: dict[str, float] = {}
        self.failed_writes = 0  # heartbeats lost to a full (or failing) disk; training went on

    def mark(self, name: str) -> None:
        """Note a start-up milestone (first time only); it goes out with the next beat."""
        self.marks.setdefault(name, time.time())

    # --- what the Lightning callbacks call -------------------------------------------------

    def step_done(self, step: int | None = None, epoch: int | None = None) -> None:
        """A training batch ended: note its duration, write if due.

        ``step``/``epoch`` may be omitted when ``read_progress`` is set: the
        trainer is then asked only when a beat is written.
        """
        now = time.monotonic()
        if self._last_step_end is not None:
            self._intervals.append(now - self._last_step_end)
        self._last_step_end = now
        if step is not None:
            self.step = step
        if epoch is not None:
            self.epoch = epoch
        if self.phase != "train":
            self.marks.setdefault("first_step", time.time())
            self.set_phase("train")
        elif now - self._last_write >= self.interval:
            self.write()

    def compute_done(self, seconds: float) -> None:
        """A step's compute (its forward, before any collective), for the straggler scores."""
        self._computes.append(seconds)

    def _compute_median(self) -> float | None:
        if not self._computes:
            return None
        ordered = sorted(self._computes)
        median = ordered[len(ordered) // 2]
        if len(ordered) == self._computes.maxlen:  # a full window: a fair "best" to compare against later
            self._compute_best = median if self._compute_best is None else min(self._compute_best, median)
        return median

    def tick(self) -> None:
        """Progress that is not a training step (a validation batch): refresh the beat if due."""
        if time.monotonic() - self._last_write >= self.interval:
            self.write()

    def set_phase(self, phase: str, *, step: int | None = None, epoch: int | None = None) -> None:
        """Enter ``phase`` and write at once (a phase change is never throttled)."""
        if phase not in PHASES:
            raise ValueError(f"unknown heartbeat phase {phase!r}; expected one of {PHASES}")
        if step is not None:
            self.step = step
        if epoch is not None:
            self.epoch = epoch
        if phase != self.phase:
            # The next step interval starts now: time spent validating or saving is not step time.
            self._last_step_end = time.monotonic() if self._last_step_end is not None else None
        self.phase = phase
        self.write()

    # --- the write -------------------------------------------------------------------------

    def write(self) -> None:
        """Write ``heartbeat.json`` now (and a ``metrics.jsonl`` line when metrics changed)."""
        self._last_write = time.monotonic()
        if self.read_progress is not None:
            self.step, self.epoch = self.read_progress()
        if self.read_metrics is not None:
            self.metrics = self.read_metrics()
        intervals = self._intervals
        beat = Heartbeat(
            pid=self.pid,
            attempt=self.attempt,
            time=time.time(),
            started_at=self.started_at,
            phase=self.phase,
            step=self.step,
            epoch=self.epoch,
            step_time=(sum(intervals) / len(intervals)) if intervals else None,
            max_step_time=max(intervals) if intervals else None,
            metrics=self.metrics,
            marks=self.marks,
            rank=self.rank,
            compute_time=self._compute_median(),
            compute_best=self._compute_best,
        )
        try:
            # On a reader thread with a deadline: a disk that does not answer costs this beat (and the next
            # ones fail at once until it answers), never the training loop (FileStalled is an OSError).
            _WRITES.run(self.path, lambda: self._write_files(beat))
        except OSError as exc:
            # Disk full, or not answering: a lost heartbeat costs nothing, a crash (or a wait) here would cost
            # the run. The next beat tries again; if none gets through, the daemon's hang clock says so.
            self.failed_writes += 1
            if self.failed_writes == 1 or self.failed_writes % 100 == 0:
                print(f"ml-supervisor trainer: cannot write the heartbeat {self.path}: {exc.strerror or exc} "
                      f"({self.failed_writes} lost so far); training goes on", file=sys.stderr, flush=True)

    def _write_files(self, beat: Heartbeat) -> None:
        write_heartbeat(self.path, beat)
        self._append_metrics_line(beat)

    def _append_metrics_line(self, beat: Heartbeat) -> None:
        if self.metrics_path is None or not beat.metrics:
            return
        key = (beat.step, beat.metrics)
        if key == self._last_metrics_line:
            return  # nothing new since the last line: keep the live-curve file small
        self._last_metrics_line = (beat.step, dict(beat.metrics))
        line = {"time": beat.time, "step": beat.step, "epoch": beat.epoch, "metrics": beat.metrics}
        _append_line_unsynced(self.metrics_path, line)


def _append_line_unsynced(path: Path, obj: object) -> None:
    """One JSON line in a single O_APPEND write, not fsynced (live curves, not a record).

    Readers use ``read_json_lines``, which skips a torn last line.
    """
    data = (json.dumps(obj, separators=(",", ":"), allow_nan=False) + "\n").encode()
    # Only to a regular file: a FIFO in its place fails at once (O_NONBLOCK) instead of waiting for a reader.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file: no metrics line is appended to it", str(path))
        os.write(fd, data)
    finally:
        os.close(fd)
