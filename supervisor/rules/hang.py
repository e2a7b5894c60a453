"""Hang detection from the trainer's heartbeat, as pure functions (no clock, no I/O).

Progress is the heartbeat's ``time`` advancing: the trainer rewrites it at
most every 2 s while steps complete and at once on a phase change. The
attempt is hung when no progress was seen for longer than its timeout:

- ``supervision.hang_timeout: off``: never.
- a duration (``20m``): that timeout, in every phase. The user owns it: it
  must cover the slowest validation and checkpoint save too.
- ``auto`` (default): before the first step (no heartbeat yet, phase
  ``setup``, or ``train`` with no step timed yet) the startup allowance;
  while training ``multiple`` x the slowest step seen (NVIDIA's resiliency
  toolkit uses 5x) plus the heartbeat period, never below ``min_timeout``; during ``validate``,
  ``checkpoint`` and ``done`` (teardown: loggers flushing) the phase
  allowance, or the step rule when that is longer.

``slowest_step_s`` is the daemon's running maximum of the heartbeats'
``max_step_time`` over the attempt (``update_slowest_step``).
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.config.durations import format_duration, parse_duration
from supervisor.jobfiles.heartbeat import Heartbeat
from supervisor.settings import HangConfig


@dataclass(frozen=True)
class HangVerdict:
    """Whether the attempt is hung, with the numbers behind it and a one-line reason."""

    hung: bool
    timeout_s: float | None  # None: hang detection off
    silent_for_s: float
    reason: str


def update_slowest_step(slowest_step_s: float | None, heartbeat: Heartbeat | None) -> float | None:
    """The running maximum of ``max_step_time`` over an attempt, after one more heartbeat."""
    if heartbeat is None or heartbeat.max_step_time is None or heartbeat.max_step_time <= 0:
        return slowest_step_s
    if slowest_step_s is None:
        return heartbeat.max_step_time
    return max(slowest_step_s, heartbeat.max_step_time)


def hang_timeout(setting: str, heartbeat: Heartbeat | None, slowest_step_s: float | None,
                 settings: HangConfig) -> float | None:
    """Seconds without progress after which the attempt counts as hung; ``None`` when detection is off.

    ``setting`` is ``supervision.hang_timeout`` (``auto``, ``off`` or a
    duration; the config loader has validated it). Raises ``ValueError`` for
    anything else.
    """
    text = str(setting).strip().lower()
    if text == "off":
        return None
    if text != "auto":
        seconds = parse_duration(text)
        return seconds if seconds > 0 else None  # "0" reads as off: a zero timeout would kill every attempt
    slowest = _slowest(heartbeat, slowest_step_s)
    step_rule = (max(settings.min_timeout, settings.multiple * slowest + settings.heartbeat_interval)
                 if slowest is not None else None)
    phase = heartbeat.phase if heartbeat is not None else "setup"
    if phase == "setup":
        return settings.startup_allowance
    if phase == "train":
        # no step timed yet: the first step (CUDA init, compile, autotune) gets the startup allowance
        return step_rule if step_rule is not None else settings.startup_allowance
    # validate, checkpoint, done, or a phase this daemon does not know yet: be generous
    return max(settings.phase_allowance, step_rule or 0.0)

# The trainer and the daemon read one clock; this much slack covers a clock stepped back under them
# (a heartbeat up to this far ahead counts as progress "now"), and bounds what a bogus time can hide.
FUTURE_SKEW_S = 3600.0


def check_hang(*, now: float, attempt_started_at: float, heartbeat: Heartbeat | None,
               slowest_step_s: float | None, setting: str, settings: HangConfig) -> HangVerdict:
    """Is the attempt hung at ``now`` (wall clock, like the heartbeat's ``time``)?

    Progress is the later of the attempt's start and the last heartbeat's time,
    so a heartbeat left from before the start (or a clock step back) cannot
    make a fresh attempt look hung. A heartbeat time more than
    ``FUTURE_SKEW_S`` ahead of ``now`` is no progress at all: trusted, one
    written far in the future would stop the clock until that time.
    """
    timeout = hang_timeout(setting, heartbeat, slowest_step_s, settings)
    beat_time = heartbeat.time if heartbeat is not None and heartbeat.time <= now + FUTURE_SKEW_S else None
    last = attempt_started_at if beat_time is None else max(beat_time, attempt_started_at)
    silent = max(0.0, now - last)
    where = _where(heartbeat)
    if timeout is None:
        return HangVerdict(False, None, silent, f"hang detection off ({where})")
    basis = _basis(setting, heartbeat, slowest_step_s, settings, timeout)
    if silent > timeout:
        return HangVerdict(True, timeout, silent,
                           f"no progress for {format_duration(silent)} ({where}; timeout "
                           f"{format_duration(timeout)}: {basis})")
    return HangVerdict(False, timeout, silent,
                       f"progress {format_duration(silent)} ago ({where}; timeout {format_duration(timeout)}: {basis})")


def _slowest(heartbeat: Heartbeat | None, slowest_step_s: float | None) -> float | None:
    candidates = [v for v in (slowest_step_s, heartbeat.max_step_time if heartbeat else None)
                  if v is not None and v > 0]
    return max(candidates) if candidates else None


def _where(heartbeat: Heartbeat | None) -> str:
    if heartbeat is None:
        return "no heartbeat yet"
    return f"phase {heartbeat.phase}, step {heartbeat.step}, epoch {heartbeat.epoch}"


def _basis(setting: str, heartbeat: Heartbeat | None, slowest_step_s: float | None, settings: HangConfig,
           timeout: float) -> str:
    if str(setting).strip().lower() != "auto":
        return "set by supervision.hang_timeout"
    slowest = _slowest(heartbeat, slowest_step_s)
    phase = heartbeat.phase if heartbeat is not None else "setup"
    if phase == "setup" or (phase == "train" and slowest is None):
        return "startup allowance"
    if phase == "train":
        if timeout == settings.min_timeout:
            return f"minimum (slowest step {slowest:.2f}s)"
        return f"{settings.multiple:g}x the slowest step {slowest:.2f}s + {settings.heartbeat_interval:g}s beat"
    return f"{phase} allowance" if timeout == settings.phase_allowance else f"{settings.multiple:g}x the slowest step"
