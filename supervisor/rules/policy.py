"""The restart policy as a pure function: how an attempt ended + history + clock + policy -> decision.

Nothing here does I/O, reads a clock or touches a process: the daemon passes
``now`` in, and acts on the returned ``Decision``. That keeps every rule
testable with a table of cases.

Causes of an attempt's end (``AttemptEnd.cause``):

    crash, hang, gpu_fault, vanished   failures (FAILURE_CAUSES): count toward max_restarts,
                                       the no-progress streak and the backoff
    reboot                             the node rebooted under the attempt: restart at once,
                                       not the job's failure
    user_restart                       ``supervisorctl restart``: restart at once, not a failure
    straggler, resize                  a planned move (off a slow GPU; elastic DDP growing back onto
                                       returned GPUs): restart at once, not a failure
    completed                          ``exit.json`` says ``fit`` returned normally
    user_stop                          ``supervisorctl stop``
    budget                             the daemon stopped the attempt because the budget was spent
    config_error                       the trainer rejected the config: never retried

Rules, in the order they are applied:

1. ``completed``, ``user_stop``, ``budget`` and ``config_error`` end the job as
   what they say, whatever the clock: a run that completed on its own just after
   its deadline completed (``finished``), a stop is the user's (``user``), and a
   config error stays a config error (the budget would hide the real problem).
   ``completed`` with ``completion_reason == "deadline"`` ends as ``budget``.
2. Every other cause (failures, ``reboot``, ``user_restart``) finishes the job
   ``completed``/``budget`` when the budget is spent (``now >= deadline``): the
   best checkpoint is the result.
3. ``reboot`` and ``user_restart`` restart with no delay.
4. A failure ends the job ``failed``/``no_progress`` when its no-progress streak
   reaches ``no_progress_attempts``, else ``failed``/``max_restarts`` when the
   failures of the last ``restart_window`` exceed ``max_restarts``; otherwise it
   restarts after the backoff delay.
5. A restart whose delay would end at or after the budget deadline finishes the
   job ``completed``/``budget`` instead (relaunching only to be stopped at once
   would waste the node).

A failure on a full disk (``disk_full``: the checkpoint or the monitor's record
could not be written) is the node's, not the job's: it never counts toward
``max_restarts`` or the no-progress streak (and breaks the streak), and the job
waits with the backoff of its disk-full streak (never at once: the disk is still
full) instead of burning its restarts. Rule 5 still applies.

A user restart starts a fresh failure window and no-progress streak: rules 4 and 5
count only the attempts after the latest ``user_restart`` attempt and, for a job the
user queued again after it ended, the attempts started at or after ``counting_since``
(the time of that requeue). The user restarts because the cause was fixed; counting
the failures from before would give up again at once. The history itself is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.config.durations import format_duration, parse_duration
from supervisor.rules.causes import Cause, EndReason
from supervisor.rules.states import TERMINAL_STATES, JobState

FAILURE_CAUSES = (Cause.CRASH, Cause.HANG, Cause.GPU_FAULT, Cause.VANISHED)
"""Causes that are the job's failures: they count toward max_restarts, no-progress and the backoff."""

RESTART_NOW_CAUSES = (Cause.REBOOT, Cause.USER_RESTART, Cause.STRAGGLER, Cause.RESIZE)
"""Causes that restart at once and are not the job's failures."""

TERMINAL_CAUSES = (Cause.COMPLETED, Cause.USER_STOP, Cause.BUDGET, Cause.CONFIG_ERROR)
"""Causes that always end the job."""

ROLLBACK_CAUSES = (Cause.DIVERGED,)
"""Causes that roll back at once, counted against max_rollbacks alone (never as failures)."""

CAUSES = FAILURE_CAUSES + RESTART_NOW_CAUSES + TERMINAL_CAUSES + ROLLBACK_CAUSES

ACTIONS = ("restart", "finish")
FINAL_STATES = tuple(sorted(TERMINAL_STATES))
END_REASONS = tuple(EndReason)


@dataclass(frozen=True)
class AttemptEnd:
    """How the attempt that just ended, ended.

    ``completion_reason`` comes from ``exit.json`` when ``cause == "completed"``:
    max_epochs, max_steps, early_stopping, max_time, deadline or stopped.
    """

    cause: Cause | str  # a Cause; a string is checked by ``decide``
    ended_at: float  # wall clock, seconds
    new_checkpoints: int  # checkpoints this attempt saved
    completion_reason: str | None = None
    disk_full: bool = False  # a failure because the disk was full (outcome.is_disk_full)
    diverged_at: int | None = None  # cause diverged: the first bad step


@dataclass(frozen=True)
class PastAttempt:
    """An earlier attempt of the same job (never the one that just ended)."""

    n: int
    started_at: float
    ended_at: float | None  # None: its end was never recorded
    cause: Cause | str | None  # None: its cause was never recorded
    new_checkpoints: int
    disk_full: bool = False
    diverged_at: int | None = None


@dataclass(frozen=True)
class RestartPolicy:
    """The numbers of ``supervision`` in a job config, as seconds and counts."""

    max_restarts: int
    restart_window: float  # seconds
    backoff_initial: float
    backoff_factor: float
    backoff_max: float
    no_progress_attempts: int
    budget: float | None  # seconds from first start; None = no budget
    max_rollbacks: int = 3  # divergences (counted apart from failures) before the job ends failed

    def __post_init__(self) -> None:
        # The config loader already rejects these; a policy built by hand must not
        # slip through with values that make the rules meaningless.
        for name in ("restart_window", "backoff_initial", "backoff_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if not (math.isfinite(self.backoff_factor) and self.backoff_factor >= 1.0):
            raise ValueError(f"backoff_factor must be >= 1; got {self.backoff_factor!r}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0; got {self.max_restarts!r}")
        if self.max_rollbacks < 0:
            raise ValueError(f"max_rollbacks must be >= 0; got {self.max_rollbacks!r}")
        if self.no_progress_attempts < 1:
            raise ValueError(f"no_progress_attempts must be >= 1; got {self.no_progress_attempts!r}")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"budget must be None or a finite number > 0; got {self.budget!r}")

    @classmethod
    def from_config(cls, supervision: Mapping[str, Any]) -> RestartPolicy:
        """Build the policy from ``cfg.supervision`` (a DictConfig or a plain mapping).

        Durations go through ``parse_duration``; a validated config never fails
        here, anything else raises ``ValueError``.
        """
        backoff = supervision["backoff"]
        budget = supervision["budget"]
        return cls(
            max_restarts=int(supervision["max_restarts"]),
            restart_window=parse_duration(supervision["restart_window"]),
            backoff_initial=parse_duration(backoff["initial"]),
            backoff_factor=float(backoff["factor"]),
            backoff_max=parse_duration(backoff["max"]),
            no_progress_attempts=int(supervision["no_progress_attempts"]),
            budget=None if budget is None else parse_duration(budget),
            max_rollbacks=int(supervision["divergence"]["max_rollbacks"]) if "divergence" in supervision else 3,
        )


@dataclass(frozen=True)
class Decision:
    """What the daemon does next with the job."""

    action: str  # "restart" | "finish"
    delay: float = 0.0  # seconds to wait before relaunching (restart only)
    state: JobState | None = None  # terminal job state when finishing: completed | failed | stopped
    end_reason: EndReason | None = None  # why the job ends (finish only)
    message: str = ""  # one human sentence for events and alerts


def budget_deadline(first_started_at: float, policy: RestartPolicy) -> float | None:
    """The wall-clock time at which the job's budget is spent, or ``None`` without a budget."""
    if policy.budget is None:
        return None
    return first_started_at + policy.budget


def no_progress_streak(end: AttemptEnd, history: Sequence[PastAttempt]) -> int:
    """How many failed attempts in a row, ending with ``end``, saved no new checkpoint.

    0 when ``end`` is not a failure or saved a checkpoint. Walking back through
    ``history``, the streak stops at the first attempt that saved a checkpoint or
    was not a failure: a reboot, a user restart or an attempt whose cause was
    never recorded breaks it (none of them says the job cannot make progress,
    and wrongly failing a job costs more than one more restart).
    """
    if end.cause not in FAILURE_CAUSES or end.new_checkpoints > 0 or end.disk_full:
        return 0
    streak = 1
    for past in reversed(_ordered(history)):
        if past.cause not in FAILURE_CAUSES or past.new_checkpoints > 0 or past.disk_full:
            break
        streak += 1
    return streak


def disk_full_streak(end: AttemptEnd, history: Sequence[PastAttempt]) -> int:
    """How many attempts in a row, ending with ``end``, failed on a full disk (0 when ``end`` did not)."""
    if not end.disk_full:
        return 0
    streak = 1
    for past in reversed(_ordered(history)):
        if not past.disk_full:
            break
        streak += 1
    return streak


def failures_in_window(end: AttemptEnd, history: Sequence[PastAttempt], *, now: float,
                       window: float) -> int:
    """Failures (``end`` included) that ended within ``window`` seconds before ``now``.

    ``end`` always counts when it is a failure, however long ago it ended (the
    daemon may collect it late, after its own restart): it is the failure being
    decided on. Past attempts with no recorded end never count. An end later
    than ``now`` (clock steps) counts as inside the window.
    """
    count = 1 if end.cause in FAILURE_CAUSES and not end.disk_full else 0
    for past in history:
        if (past.cause in FAILURE_CAUSES and not past.disk_full and past.ended_at is not None
                and now - past.ended_at <= window):
            count += 1
    return count


def backoff_delay(streak: int, policy: RestartPolicy) -> float:
    """The backoff before restart number ``streak`` of a failing streak.

    The first restart of a streak (``streak <= 1``) is immediate; then
    ``backoff_initial * backoff_factor ** (streak - 2)``, never above ``backoff_max``.
    """
    if streak <= 1:
        return 0.0
    try:
        delay = policy.backoff_initial * policy.backoff_factor ** (streak - 2)
    except OverflowError:  # a huge streak: the cap applies anyway
        return policy.backoff_max
    return min(delay, policy.backoff_max)


def since_user_restart(history: Sequence[PastAttempt], counting_since: float | None = None) -> list[PastAttempt]:
    """The attempts of ``history`` the failure rules count, oldest first.

    Those after the latest attempt that ended as ``user_restart`` and, when
    ``counting_since`` is given (the time a finished job was queued again by the
    user), only those started at or after it.
    """
    ordered = _ordered(history)
    restarts = [i for i, past in enumerate(ordered) if past.cause == "user_restart"]
    counted = ordered[restarts[-1] + 1:] if restarts else ordered
    if counting_since is not None:
        counted = [past for past in counted if past.started_at >= counting_since]
    return counted


def decide(end: AttemptEnd, history: Sequence[PastAttempt], *, now: float, first_started_at: float,
           policy: RestartPolicy, counting_since: float | None = None) -> Decision:
    """Decide what follows the attempt that ended as ``end`` (see the module docstring for the rules).

    ``history`` holds the job's earlier attempts (any order; they are sorted by
    ``n``), not the one that just ended. ``now`` is the wall clock at the
    decision, ``first_started_at`` when the job's first attempt started.

    The backoff runs from when the attempt ended, not from the decision: a
    daemon that collects a crash late (it was itself restarting) waits only
    what is left of it. Raises ``ValueError`` for a cause it does not know.

    ``counting_since`` is when the user last queued the finished job again
    (``supervisorctl restart``), or ``None``: failures before it are not counted.
    """
    if end.cause not in CAUSES:
        raise ValueError(f"unknown cause {end.cause!r}; expected one of {', '.join(CAUSES)}")
    cause = Cause(end.cause)
    if cause in TERMINAL_CAUSES:
        return decide_terminal(cause, policy, completion_reason=end.completion_reason)

    deadline = budget_deadline(first_started_at, policy)
    label = _CAUSE_TEXT[cause]
    if deadline is not None and now >= deadline:
        return _finish(JobState.COMPLETED, EndReason.BUDGET,
                       f"{label}; time budget{_budget_text(policy)} spent; not restarting")

    if cause in RESTART_NOW_CAUSES:
        return Decision("restart", 0.0, message=f"{label}; restarting now")

    history = since_user_restart(history, counting_since)
    if cause in ROLLBACK_CAUSES:
        return _decide_rollback(end, history, policy)
    if end.disk_full and cause in FAILURE_CAUSES:
        return _wait_for_disk(end, history, now=now, deadline=deadline, policy=policy, label=label)
    streak = no_progress_streak(end, history)
    if streak >= policy.no_progress_attempts:
        return _finish(JobState.FAILED, EndReason.NO_PROGRESS,
                       f"{label}; {_plural(streak, 'attempt')} in a row saved no new checkpoint; giving up")
    failures = failures_in_window(end, history, now=now, window=policy.restart_window)
    window_text = format_duration(policy.restart_window)
    if failures > policy.max_restarts:
        return _finish(JobState.FAILED, EndReason.MAX_RESTARTS,
                       f"{label}; {_plural(failures, 'failure')} in {window_text}, "
                       f"more than max_restarts={policy.max_restarts}; giving up")

    backoff = backoff_delay(streak, policy)
    # The wait runs from the end of the attempt; clamp for a clock that stepped back.
    delay = min(backoff, max(0.0, end.ended_at + backoff - now))
    if deadline is not None and now + delay >= deadline:
        return _finish(JobState.COMPLETED, EndReason.BUDGET,
                       f"{label}; the {format_duration(delay)} backoff would outlast the time budget; not restarting")
    when = f"retrying in {format_duration(delay)}" if delay > 0 else "retrying now"
    return Decision("restart", delay,
                    message=f"{label}; restart {failures} of {policy.max_restarts} in {window_text} window; {when}")


def _decide_rollback(end: AttemptEnd, history: Sequence[PastAttempt], policy: RestartPolicy) -> Decision:
    """A divergence: roll back at once, or give up after more than ``max_rollbacks`` of them."""
    steps = [p.diverged_at for p in _ordered(history) if p.cause in ROLLBACK_CAUSES] + [end.diverged_at]
    at = ", ".join("?" if step is None else str(step) for step in steps)
    if len(steps) > policy.max_rollbacks:
        return _finish(JobState.FAILED, EndReason.DIVERGED,
                       f"the loss diverged {_plural(len(steps), 'time')} (at step{'s' if len(steps) > 1 else ''} "
                       f"{at}), more than max_rollbacks={policy.max_rollbacks}; giving up")
    where = f" at step {end.diverged_at}" if end.diverged_at is not None else ""
    return Decision("restart", 0.0, message=f"the loss diverged{where}; rollback {len(steps)} of "
                                            f"{policy.max_rollbacks}; rolling back to a checkpoint before it now")


def _wait_for_disk(end: AttemptEnd, history: Sequence[PastAttempt], *, now: float, deadline: float | None,
                   policy: RestartPolicy, label: str) -> Decision:
    """A failure on a full disk: wait (the streak's backoff, never zero) and try again, counting nothing."""
    backoff = backoff_delay(disk_full_streak(end, history) + 1, policy)
    delay = min(backoff, max(0.0, end.ended_at + backoff - now))
    if deadline is not None and now + delay >= deadline:
        return _finish(JobState.COMPLETED, EndReason.BUDGET,
                       f"{label} (disk full); the {format_duration(delay)} wait would outlast the time budget; "
                       "not restarting")
    return Decision("restart", delay, message=f"{label} (disk full); not counted toward max_restarts; "
                                              f"retrying in {format_duration(delay)}")


def decide_terminal(cause: Cause, policy: RestartPolicy, *, completion_reason: str | None = None) -> Decision:
    """How a job ends for a cause that always ends it (rule 1); also used for a job stopped
    while it had no attempt running (queued or in backoff), so that mapping has one home.
    """
    if cause is Cause.COMPLETED:
        if completion_reason == "deadline":
            return _finish(JobState.COMPLETED, EndReason.BUDGET,
                           "time budget reached: training stopped at its deadline")
        why = f" ({completion_reason})" if completion_reason else ""
        return _finish(JobState.COMPLETED, EndReason.FINISHED, f"training completed{why}")
    if cause is Cause.USER_STOP:
        return _finish(JobState.STOPPED, EndReason.USER, "stopped by the user")
    if cause is Cause.BUDGET:
        return _finish(JobState.COMPLETED, EndReason.BUDGET, f"time budget{_budget_text(policy)} spent; stopped")
    if cause is Cause.CONFIG_ERROR:
        return _finish(JobState.FAILED, EndReason.CONFIG_ERROR, "the trainer rejected the config; not retried")
    raise ValueError(f"{cause.value} does not end a job by itself")


_CAUSE_TEXT = {
    Cause.CRASH: "crash",
    Cause.HANG: "hang",
    Cause.GPU_FAULT: "GPU fault",
    Cause.VANISHED: "trainer vanished",
    Cause.REBOOT: "node rebooted",
    Cause.USER_RESTART: "restart requested",
    Cause.DIVERGED: "the loss diverged",
    Cause.STRAGGLER: "moved off a straggling GPU",
    Cause.RESIZE: "growing back onto returned GPUs",
}


def _finish(state: JobState, end_reason: EndReason, message: str) -> Decision:
    return Decision("finish", 0.0, state=state, end_reason=end_reason, message=message)


def _ordered(history: Sequence[PastAttempt]) -> list[PastAttempt]:
    return sorted(history, key=lambda a: a.n)


def _budget_text(policy: RestartPolicy) -> str:
    return f" of {format_duration(policy.budget)}" if policy.budget is not None else ""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
