"""How far a job is, how fast it goes, when it ends, and what its faults cost: pure functions.

Everything here is computed from what the daemon already has: each attempt's
(time, step) samples (``metrics.jsonl`` lines and the last heartbeat), the
step each attempt resumed at (its checkpoint's step in the manifest), how each
attempt ended (``attempts.reason``), the trainer's ``max_steps`` /
``max_epochs`` in the frozen config and the budget. ``api/progress_view.py``
reads those files; nothing here reads a file or the clock.

- **Target**: ``max_steps``, or ``max_epochs`` x steps per epoch once an epoch
  has ended (see ``steps_per_epoch``) (Lightning's defaults: neither set means 1000 epochs; ``-1``
  unbounded), the smaller of the two when both bound the run. A run bounded by
  neither has the budget as its target: ``percent`` is then the share of the
  budget used.
- **Speed**: steps over seconds across the newest attempt's samples of the
  ``WINDOW_S`` seconds before its last step (so a long validation slows it
  gradually instead of zeroing it): one attempt's samples only, so the time
  between attempts (downtime) never counts. Before an attempt has two samples,
  the previous one's; then the heartbeat's mean step interval.
- **Lost to faults**: after each attempt that ended by a fault (crash, hang,
  GPU fault, reboot, vanished, diverged; not a stop, a budget or a completion),
  the downtime from its last progress (its last sample: a hang's silent minutes
  count) to the next attempt's first step, plus the work thrown away: the steps
  it made past the point a later attempt resumed from (a rewind to the best
  checkpoint throws away more), each at that attempt's own seconds per step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.rules.causes import Cause

WINDOW_S = 60.0  # the speed's window: long enough to smooth a validation pass, short enough to follow a slow-down
LIGHTNING_DEFAULT_EPOCHS = 1000  # Trainer(max_epochs=None, max_steps=-1) trains this many epochs
# How an attempt may end and leave the job worse off than if it had not run: its downtime and thrown-away work
# are lost to the fault. A user's stop or restart, the budget and a completion are not faults.
FAULT_CAUSES = frozenset({Cause.CRASH, Cause.HANG, Cause.GPU_FAULT, Cause.REBOOT, Cause.VANISHED, Cause.DIVERGED})


@dataclass(frozen=True)
class Point:
    """A sample of training progress: at wall-clock ``time`` the global step was ``step`` (in ``epoch``)."""

    time: float
    step: int
    epoch: int | None = None


@dataclass(frozen=True)
class AttemptTrace:
    """What is known of one attempt's progress.

    ``resume_step``: the step it started from (0 from scratch, None unknown); ``first_step_at``: when it
    started making steps (None: not yet, or unknown); ``points``: its samples, any order; ``final_step``: the
    step its exit record gives; ``step_time``: its heartbeat's mean recent step interval; ``cause``: why it
    ended (``attempts.reason``), None while it runs.
    """

    n: int
    started_at: float
    ended_at: float | None = None
    cause: str | None = None
    resume_step: int | None = 0
    first_step_at: float | None = None
    points: tuple[Point, ...] = ()
    final_step: int | None = None
    step_time: float | None = None

    @property
    def samples(self) -> list[Point]:
        return sorted(self.points, key=lambda p: (p.time, p.step))

    @property
    def reached(self) -> int | None:
        """The highest step it made (None: nothing known)."""
        steps = [p.step for p in self.points]
        if self.final_step is not None:
            steps.append(self.final_step)
        if self.resume_step is not None:
            steps.append(self.resume_step)
        return max(steps) if steps else None

    @property
    def last_progress_at(self) -> float:
        """When it was last seen making progress: its last sample, else its end, else its start."""
        if self.points:
            return max(p.time for p in self.points)
        return self.ended_at if self.ended_at is not None else self.started_at

    @property
    def resumed_at(self) -> float | None:
        """When it started making steps: its first step, else its first sample past its resume step."""
        if self.first_step_at is not None:
            return self.first_step_at
        start = self.resume_step if self.resume_step is not None else 0
        moving = [p.time for p in self.points if p.step > start]
        return min(moving) if moving else None

    @property
    def faulted(self) -> bool:
        return self.ended_at is not None and (self.cause is None or self.cause in FAULT_CAUSES)

    def seconds_per_step(self) -> float | None:
        """Its mean seconds per step while it trained, or None when it made no measurable progress."""
        samples = self.samples
        if len(samples) >= 2:
            span, steps = samples[-1].time - samples[0].time, samples[-1].step - samples[0].step
            if span > 0 and steps > 0:
                return span / steps
        return self.step_time if self.step_time else None


@dataclass(frozen=True)
class Restart:
    """One restart after a fault, for the page's curve: where it resumed and what it cost."""

    attempt: int  # the attempt that resumed
    after: str | None  # the cause that ended the one before
    resumed_step: int | None
    reached_step: int | None  # the step the attempt before had reached: (resumed_step, reached_step] is redone
    downtime_s: float

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "after": self.after, "resumed_step": self.resumed_step,
                "reached_step": self.reached_step, "downtime_s": round(self.downtime_s, 3)}


@dataclass(frozen=True)
class FaultCost:
    downtime_s: float = 0.0
    recomputed_steps: int = 0
    recompute_s: float = 0.0
    restarts: tuple[Restart, ...] = ()

    @property
    def lost_s(self) -> float:
        return self.downtime_s + self.recompute_s


@dataclass(frozen=True)
class Progress:
    """``status --json``'s ``progress``."""

    step: int
    target_step: int | None = None
    target_from: str | None = None  # max_steps | max_epochs | budget | None
    percent: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    ends_by: str | None = None  # target | budget | None
    steps_per_epoch: int | None = None
    cost: FaultCost = field(default_factory=FaultCost)
    used_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        lost = self.cost.lost_s
        return {
            "step": self.step,
            "target_step": self.target_step,
            "target_from": self.target_from,
            "percent": None if self.percent is None else round(self.percent, 1),
            "steps_per_s": None if self.steps_per_s is None else _round_sig(self.steps_per_s, 4),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "ends_by": self.ends_by,
            "steps_per_epoch": self.steps_per_epoch,
            "lost_s": round(lost, 1),
            "lost_share": round(lost / self.used_s, 4) if self.used_s > 0 else None,
            "downtime_s": round(self.cost.downtime_s, 1),
            "recomputed_steps": self.cost.recomputed_steps,
            "restarts": [r.as_dict() for r in self.cost.restarts],
        }


def _round_sig(x: float, digits: int) -> float:
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def step_limits(max_steps: Any, max_epochs: Any, max_time: Any = None) -> tuple[int | None, int | None]:
    """``(max_steps, max_epochs)`` as Lightning applies them, None where unbounded.

    Lightning: ``max_steps=-1`` (its default) is no limit; ``max_epochs=None`` becomes 1000 when ``max_steps``
    is -1 and no ``max_time`` is set, else -1 (no limit); ``-1`` is no limit.
    """
    steps = _as_int(max_steps)
    epochs = _as_int(max_epochs)
    steps = steps if steps is not None and steps >= 0 else None
    if max_epochs is None:
        epochs = LIGHTNING_DEFAULT_EPOCHS if steps is None and max_time is None else None
    elif epochs is None or epochs < 0:
        epochs = None
    return steps, epochs


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def steps_per_epoch(observations: Iterable[tuple[int, int]]) -> int | None:
    """Steps per epoch from ``(global step, epoch)`` pairs, once some pair is past the first epoch.

    In epoch ``e`` (0-based) the step ``s`` satisfies ``e * spe <= s <= (e + 1) * spe`` (the upper end at the
    epoch's last step, its end-of-epoch checkpoint and the heartbeat written as validation starts, the lower at
    the next epoch's start), so every pair bounds ``spe``: ``s / (e + 1) <= spe <= s / e``. The answer is the
    smallest whole number within the bounds: the trainer writes a beat the moment an epoch's validation starts
    (a phase change is never throttled) and Lightning saves at the epoch's end, so the lower bound is met
    exactly, while the upper one closes in only as ``1/e`` (the first beat of an epoch comes up to a beat
    interval after its start). None before any epoch ended.
    """
    low, high = 0.0, math.inf
    for step, epoch in observations:
        if step <= 0 or epoch < 0:
            continue
        low = max(low, step / (epoch + 1))
        if epoch >= 1:
            high = min(high, step / epoch)
    if math.isinf(high):
        return None
    least, most = math.ceil(low - 1e-9), math.floor(high + 1e-9)
    if least > most:  # inconsistent pairs (skipped batches, a changed data set): the tightest upper bound
        return max(1, most)
    return max(1, least)


def target(max_steps: int | None, max_epochs: int | None, per_epoch: int | None) -> tuple[int | None, str | None]:
    """The step the run stops at, and what sets it; ``(None, None)`` when unknown or unbounded."""
    candidates: list[tuple[int, str]] = []
    if max_steps is not None:
        candidates.append((max_steps, "max_steps"))
    if max_epochs is not None and per_epoch is not None:
        candidates.append((max_epochs * per_epoch, "max_epochs"))
    if not candidates:
        return None, None
    return min(candidates)


def steps_per_second(attempts: Sequence[AttemptTrace], window: float = WINDOW_S) -> float | None:
    """Recent speed: over the newest attempt that has two usable samples (see the module docstring)."""
    for attempt in reversed(attempts):
        rate = _window_rate(attempt.samples, window)
        if rate is not None:
            return rate
    for attempt in reversed(attempts):
        if attempt.step_time:
            return 1.0 / attempt.step_time
    return None


def _window_rate(samples: list[Point], window: float) -> float | None:
    """Steps over seconds across the samples of the ``window`` seconds before the last step was seen: while the
    step stands still (a validation pass) the window keeps its start and its speed falls gradually, rather than
    reading zero as soon as a window passes without a step."""
    if len(samples) < 2:
        return None
    last = samples[-1]
    moved = len(samples) - 1
    while moved > 0 and samples[moved - 1].step >= last.step:
        moved -= 1
    start = samples[moved].time - window
    first = next(p for p in samples if p.time >= start)
    span, steps = last.time - first.time, last.step - first.step
    if span <= 0 or steps <= 0:
        return None
    return steps / span


def fault_cost(attempts: Sequence[AttemptTrace], now: float, *, job_live: bool,
               rate: float | None = None) -> FaultCost:
    """Downtime and thrown-away work of every fault so far (see the module docstring).

    ``job_live``: the job is not terminal, so an attempt that just ended by a fault is still costing downtime
    until the next one makes its first step. ``rate``: the speed to price steps with when an attempt's own is
    unknown.
    """
    downtime = 0.0
    restarts: list[Restart] = []
    for i, prev in enumerate(attempts):
        if not prev.faulted:
            continue
        following = attempts[i + 1] if i + 1 < len(attempts) else None
        if following is None:
            if job_live:
                downtime += max(0.0, now - prev.last_progress_at)
            continue
        back = following.resumed_at
        if back is None:
            back = following.ended_at if following.ended_at is not None else now
        down = max(0.0, back - prev.last_progress_at)
        downtime += down
        restarts.append(Restart(attempt=following.n, after=prev.cause, resumed_step=following.resume_step,
                                reached_step=prev.reached, downtime_s=down))
    wasted_steps, wasted_s = _thrown_away(attempts, rate)
    return FaultCost(downtime_s=downtime, recomputed_steps=wasted_steps, recompute_s=wasted_s,
                     restarts=tuple(restarts))


def _thrown_away(attempts: Sequence[AttemptTrace], rate: float | None) -> tuple[int, float]:
    """Steps made by faulted attempts that are no longer on the run's timeline, and the seconds they took.

    Attempt ``a`` made steps ``(resume, reached]``; a later attempt that resumed at ``r`` redoes every step of
    ``a`` past ``r`` (a resume moves the later checkpoints aside: the timeline is linear), so ``a`` threw away
    ``reached - max(resume, min r)`` of them.
    """
    steps_total, seconds = 0, 0.0
    later_resume = math.inf
    for attempt in reversed(attempts):
        reached = attempt.reached
        if attempt.faulted and reached is not None and not math.isinf(later_resume):
            start = attempt.resume_step if attempt.resume_step is not None else 0
            wasted = max(0, reached - max(start, int(later_resume)))
            if wasted:
                per_step = attempt.seconds_per_step() or (1.0 / rate if rate else None)
                steps_total += wasted
                if per_step is not None:
                    seconds += wasted * per_step
        if attempt.resume_step is not None:
            later_resume = min(later_resume, attempt.resume_step)
    return steps_total, seconds


def compute(*, attempts: Sequence[AttemptTrace], step: int, now: float, job_live: bool,
            max_steps: int | None, max_epochs: int | None, per_epoch: int | None,
            budget_s: float | None, used_s: float, window: float = WINDOW_S) -> Progress:
    """The whole ``progress`` of one job. ``attempts`` oldest first; ``used_s``: wall clock since the first start
    (the budget's clock); ``job_live``: the job is not terminal (an ETA only then)."""
    rate = steps_per_second(attempts, window)
    cost = fault_cost(attempts, now, job_live=job_live, rate=rate)
    goal, source = target(max_steps, max_epochs, per_epoch)
    budget_left = None if budget_s is None else max(0.0, budget_s - used_s)
    percent = eta = None
    ends_by: str | None = None
    if goal is not None:
        percent = 100.0 if goal <= 0 else min(100.0, max(0.0, 100.0 * step / goal))
        if job_live:
            left = max(0, goal - step)
            eta = left / rate if rate else (0.0 if left == 0 else None)
            if budget_left is not None and (eta is None or eta > budget_left):
                ends_by = "budget" if eta is not None else None
            else:
                ends_by = "target" if eta is not None else None
    elif budget_s is not None and max_epochs is None and max_steps is None:
        # bounded by nothing but the budget: the budget is the target
        source = "budget"
        percent = 100.0 if budget_s <= 0 else min(100.0, 100.0 * used_s / budget_s)
        if job_live:
            eta = budget_left
            ends_by = "budget"
            if rate is not None and budget_left is not None:
                goal = step + int(rate * budget_left)
    # else: epochs bound the run but none has ended yet (its length unknown), or nothing bounds it: no target
    return Progress(step=step, target_step=goal, target_from=source, percent=percent, steps_per_s=rate,
                    eta_s=eta, ends_by=ends_by, steps_per_epoch=per_epoch, cost=cost, used_s=used_s)
