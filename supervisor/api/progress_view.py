"""``status``'s ``progress``: the files the daemon already reads, turned into ``rules.progress``'s inputs.

Per attempt: the heartbeat (its last sample, the ``first_step`` mark, the mean step time), the tail of
``metrics.jsonl`` for the newest attempts of a job that runs (the speed's window: one line per heartbeat that
carried metrics),
the step its resume checkpoint was saved at (the manifest's ``save`` lines, by the attempt that saved it) and
how it ended (the store). The job's ``max_steps`` / ``max_epochs`` / ``max_time`` come from the frozen config.
Every read is bounded (``safe_read``) and a file that does not answer costs only its part of the answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from omegaconf import OmegaConf

from supervisor.jobfiles.atomic import read_json_lines
from supervisor.jobfiles.bounds import bounded_int, clamped_count, unix_time
from supervisor.jobfiles.heartbeat import Heartbeat, read_heartbeat
from supervisor.jobfiles.layout import JobLayout
from supervisor.jobfiles.safe_read import read_range, regular_size
from supervisor.rules import progress as rules
from supervisor.store import AttemptRow, JobRow

METRICS_TAIL = 64 * 1024  # of the newest attempts' metrics.jsonl: ~400 lines, some 13 minutes at a beat per 2 s
TAIL_ATTEMPTS = 2  # the newest attempts whose metrics tail is read (the speed's window is in the newest one)
HEARTBEAT_ATTEMPTS = 100  # the newest attempts whose heartbeat is read; older ones are known from the store alone


def progress_view(layout: JobLayout, job: JobRow, attempts: Sequence[AttemptRow], frozen: Any | None,
                  step: int, now: float) -> dict[str, Any]:
    """``{step, target_step, target_from, percent, steps_per_s, eta_s, ends_by, steps_per_epoch, lost_s,
    lost_share, downtime_s, recomputed_steps, restarts}``; see ``rules/progress.py``."""
    saves = _saves(layout)
    observations: list[tuple[int, int]] = [(s, e) for (_, s, e) in saves.values_flat()]
    traces = []
    for i, row in enumerate(attempts):
        recent = len(attempts) - i
        beat = _quiet(lambda row=row: read_heartbeat(layout.attempt(row.n).heartbeat)) \
            if recent <= HEARTBEAT_ATTEMPTS else None
        # the speed's window, for a job that runs: a finished one's speed is each attempt's mean (no tail read)
        tail = _metrics_tail(layout, row.n) if recent <= TAIL_ATTEMPTS and not job.state.terminal else []
        trace = _trace(row, beat, tail, saves.step_of(row))
        traces.append(trace)
        observations.extend((p.step, p.epoch) for p in trace.points if p.epoch is not None)
    latest = traces[-1] if traces else None
    if latest is not None and attempts[-1].live and latest.resume_step is not None:
        # a live attempt stands at least at its resume point (a starting one's setup beat says step 0)
        step = max(step, latest.resume_step)
    max_steps, max_epochs = rules.step_limits(*_limits(frozen))
    per_epoch = rules.steps_per_epoch(observations)
    started = job.first_started_at
    used = 0.0 if started is None else max(0.0, (job.ended_at if job.ended_at is not None else now) - started)
    result = rules.compute(attempts=traces, step=step, now=now, job_live=not job.state.terminal,
                           max_steps=max_steps, max_epochs=max_epochs, per_epoch=per_epoch,
                           budget_s=job.budget_s, used_s=used)
    return result.as_dict()


def _quiet(read: Any) -> Any:
    try:
        return read()
    except OSError:  # a file that does not answer in time, or no descriptors: this part is left out
        return None


def _limits(frozen: Any | None) -> tuple[Any, Any, Any]:
    """The trainer's ``max_steps``, ``max_epochs`` and ``max_time`` as the frozen config has them (unset: the
    Lightning defaults -1, None, None)."""
    if frozen is None:
        return -1, None, None
    try:
        trainer = OmegaConf.select(frozen, "trainer", default=None)
        if trainer is None:
            return -1, None, None
        values = OmegaConf.to_container(trainer, resolve=False) if OmegaConf.is_config(trainer) else trainer
        if not isinstance(values, dict):
            return -1, None, None
        return values.get("max_steps", -1), values.get("max_epochs"), values.get("max_time")
    except Exception:  # an interpolation that does not resolve, an odd config: no step target
        return -1, None, None


class _Saves:
    """The manifest's ``save`` lines: per path, (attempt, step, epoch) in file order."""

    def __init__(self) -> None:
        self.by_path: dict[str, list[tuple[int, int, int]]] = {}

    def add(self, path: str, attempt: int, step: int, epoch: int) -> None:
        self.by_path.setdefault(os.path.normpath(path), []).append((attempt, step, epoch))

    def values_flat(self) -> list[tuple[int, int, int]]:
        return [entry for entries in self.by_path.values() for entry in entries]

    def step_of(self, row: AttemptRow) -> int | None:
        """The step attempt ``row`` resumed at: 0 from scratch, else its checkpoint's step as the attempts
        before it saved it (``last.ckpt`` is rewritten in place: the newest save before this attempt); None
        when the manifest does not say."""
        if row.resumed_from is None:
            return 0
        entries = [e for e in self.by_path.get(os.path.normpath(row.resumed_from), []) if e[0] < row.n]
        return entries[-1][1] if entries else None


def _saves(layout: JobLayout) -> _Saves:
    saves = _Saves()
    lines = _quiet(lambda: read_json_lines(layout.manifest)) or []
    for line in lines:
        if not isinstance(line, dict) or line.get("event") != "save":
            continue
        try:
            saves.add(str(line["path"]), bounded_int(line.get("attempt", 0)), clamped_count(line["step"]),
                      clamped_count(line.get("epoch", 0)))
        except (KeyError, TypeError, ValueError):
            continue
    return saves


def _metrics_tail(layout: JobLayout, n: int) -> list[rules.Point]:
    """The (time, step, epoch) of the last lines of attempt ``n``'s ``metrics.jsonl``."""
    path = layout.attempt(n).metrics
    size = _quiet(lambda: regular_size(path))
    if not size:
        return []
    start = max(0, size - METRICS_TAIL)
    data = _quiet(lambda: read_range(path, start, METRICS_TAIL))
    if not data:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first is a piece of a line
    points = []
    for raw in lines[:-1]:  # the last is empty, or a line still being written
        try:
            line = json.loads(raw)
            points.append(rules.Point(time=unix_time(line["time"]), step=clamped_count(line["step"]),
                                      epoch=clamped_count(line["epoch"]) if line.get("epoch") is not None
                                      else None))
        except (ValueError, KeyError, TypeError, RecursionError):
            continue
    return points


def _trace(row: AttemptRow, beat: Heartbeat | None, tail: list[rules.Point], resume_step: int | None
           ) -> rules.AttemptTrace:
    points = list(tail)
    first_step_at: float | None = None
    step_time: float | None = None
    first_point: rules.Point | None = None
    if beat is not None and beat.attempt == row.n and beat.phase != "setup":
        # a setup beat carries no step of this attempt yet (the real trainer's says 0 before the restore)
        points.append(rules.Point(time=beat.time, step=beat.step, epoch=beat.epoch))
        first_step_at = beat.marks.get("first_step")
        if first_step_at is not None and resume_step is not None:
            first_point = rules.Point(time=first_step_at, step=resume_step + 1)  # the mark: its first step ended
        elif not beat.marks and beat.phase == "train":
            first_step_at = beat.started_at  # a writer without marks (the fake trainer): training from its start
            if resume_step is not None:
                first_point = rules.Point(time=first_step_at, step=resume_step)
        step_time = beat.step_time
    if first_point is not None:
        points.append(first_point)
    return rules.AttemptTrace(n=row.n, started_at=row.started_at, ended_at=row.ended_at, cause=row.reason,
                              resume_step=resume_step, first_step_at=first_step_at, points=tuple(points),
                              final_step=row.global_step, step_time=step_time)
