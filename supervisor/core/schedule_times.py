"""When scheduled runs fire: ``--at`` and ``--cron`` read and checked, fire times from APScheduler's triggers.

APScheduler's ``DateTrigger`` and ``CronTrigger`` are used for what they compute, never
for running anything (no APScheduler scheduler, no thread): given "now", the next fire
time. "Now" is always passed in, read by the caller from the loop's injected clock
(``time.time`` in the daemon, a hand-moved clock in the tests), and each trigger's
``start_date`` is the schedule's creation time on that same clock: APScheduler would
otherwise take ``datetime.now()`` when the trigger is built, and a test that moves time
by hand would see fire times of the real day. Pure functions, no store.

Cron lines are the standard five fields (minute hour day-of-month month day-of-week, or
``@daily``-style shortcuts), read as cron reads them: day of week 0 or 7 is Sunday
(APScheduler 3 counts from Monday: the field is rewritten as day names before it sees
it). A day of month and a day of week in one line would mean "either" to cron and "both"
to APScheduler: refused, with one line.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from supervisor.errors import ConfigError

MISFIRE_CHOICES = ("run_once", "skip")
# A fire time examined later than this (the daemon was down, or stopped for longer) has misfired: the schedule's
# `misfire` decides. Within it, the fire is simply late (a busy loop) and runs.
MISFIRE_GRACE_S = 60.0
# fire times counted at most when telling how many were missed (each costs ~0.1 ms on the loop: a minutely cron
# down for a week counts 1000, not 10080)
MAX_COUNTED = 1000

_FIELDS = ("minute", "hour", "day", "month", "day_of_week")
_SHORTCUTS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
              "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering: 0 (and 7) is Sunday
_DAY_ITEM = re.compile(r"^(\*|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/(\d+))?$")
_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]{0,30}(?:/[A-Za-z0-9_+-]{1,30}){0,3}$")  # IANA: Area/Location


@dataclass(frozen=True)
class When:
    """A schedule's rule: ``kind`` "at" (``spec`` an ISO time) or "cron" (``spec`` the line), read in ``timezone``."""

    kind: str
    spec: str
    timezone: str

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def next_after(self, after: float, *, created_at: float) -> float | None:
        """The first fire time strictly after ``after`` (a time on the loop's clock); None when there is none."""
        zone = self.zone
        if self.kind == "at":
            run = at_time(self.spec, zone).timestamp()
            return run if run > after else None
        start = datetime.fromtimestamp(math.floor(after) + 1, zone)  # whole seconds: cron fires on them
        fire = cron_trigger(self.spec, zone, datetime.fromtimestamp(created_at, zone)).get_next_fire_time(None, start)
        return None if fire is None else float(fire.timestamp())

    def upcoming(self, after: float, *, created_at: float, count: int = 3) -> list[float]:
        """The next ``count`` fire times after ``after`` (fewer for an ``at`` schedule)."""
        times: list[float] = []
        t: float | None = after
        while t is not None and len(times) < count:
            t = self.next_after(t, created_at=created_at)
            if t is not None:
                times.append(t)
        return times

    def missed(self, due: float, now: float, *, created_at: float) -> int:
        """How many fire times fall in ``[due, now]`` (``due`` is one; at most ``MAX_COUNTED``)."""
        n, t = 1, self.next_after(due, created_at=created_at)
        while t is not None and t <= now and n < MAX_COUNTED:
            n += 1
            t = self.next_after(t, created_at=created_at)
        return n


def parse_when(*, at: str | None, cron: str | None, timezone: str | None, now: float) -> When:
    """``--at`` or ``--cron`` checked (``ConfigError``, one line); ``now`` (the loop's clock) refuses a past --at."""
    if (at is None) == (cron is None):
        raise ConfigError("schedule", None, "give either --at TIME or --cron LINE")
    zone_name = resolve_timezone(timezone)
    zone = ZoneInfo(zone_name)
    if at is not None:
        when = When("at", at.strip(), zone_name)
        run = at_time(when.spec, zone)
        if run.timestamp() <= now:
            shown = datetime.fromtimestamp(now, zone).strftime("%Y-%m-%d %H:%M:%S %Z")
            raise ConfigError(f"--at {at!r}", None, f"{format_time(run.timestamp(), zone_name)} is in the past "
                                                    f"(it is {shown})")
        return when
    assert cron is not None
    line = " ".join(cron.split())
    cron_trigger(line, zone, datetime.fromtimestamp(now, zone))  # raises the one-line error
    return When("cron", line, zone_name)


def resolve_timezone(name: str | None) -> str:
    """An IANA zone name checked (``ConfigError`` naming it); None: the daemon's local zone."""
    if name is None:
        try:
            from tzlocal import get_localzone_name

            name = get_localzone_name() or "UTC"
        except Exception:  # no zone configured on the node
            name = "UTC"
    try:
        if not _ZONE_NAME.match(name):
            raise ValueError(name)
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError("--tz", None, f"unknown time zone {name[:60]!r} (an IANA name such as Europe/Berlin "
                                        "or UTC)") from None
    return name


def at_time(spec: str, zone: ZoneInfo) -> datetime:
    """``--at``'s time: ISO 8601 (``2026-12-08 02:00``, ``2026-12-08T02:00:00+01:00``); naive means in ``zone``."""
    try:
        when = datetime.fromisoformat(spec.strip())
    except ValueError:
        raise ConfigError(f"--at {spec[:60]!r}", None, "not a time: write it as YYYY-MM-DD HH:MM "
                                                       "(ISO 8601, optionally with seconds and a UTC offset)") from None
    return when.replace(tzinfo=zone) if when.tzinfo is None else when


def cron_trigger(line: str, zone: ZoneInfo, start: datetime) -> CronTrigger:
    """APScheduler's trigger for a standard cron line, starting at ``start``; ``ConfigError`` (one line) if bad."""
    source = f"--cron {line[:80]!r}"
    fields = _SHORTCUTS.get(line.strip().lower(), line).split()
    if len(fields) != 5:
        raise ConfigError(source, None, f"a cron line has 5 fields (minute hour day-of-month month day-of-week) "
                                        f"or is one of {', '.join(sorted(_SHORTCUTS))}; got {len(fields)} field"
                                        f"{'s' if len(fields) != 1 else ''}")
    values = dict(zip(_FIELDS, fields, strict=True))
    values["day_of_week"] = _weekdays(values["day_of_week"], source)
    if values["day"] != "*" and values["day_of_week"] != "*":
        raise ConfigError(source, None, "give a day of month or a day of week, not both (cron runs on either, "
                                        "which this scheduler cannot express)")
    try:
        return CronTrigger(**values, timezone=zone, start_date=start)
    except ValueError as exc:
        raise ConfigError(source, None, _field_problem(values, zone, start) or str(exc)) from None


def _field_problem(values: dict[str, str], zone: ZoneInfo, start: datetime) -> str | None:
    """Which field APScheduler refused, and why (its own message names the expression, not always the field)."""
    for name in _FIELDS:
        try:
            CronTrigger(**{name: values[name]}, timezone=zone, start_date=start)
        except ValueError as exc:
            return f"{name.replace('_', ' ')}: {exc}"
    return None


def _weekdays(field: str, source: str) -> str:
    """Cron's day-of-week field (0 or 7 = Sunday, names, ranges, steps) as APScheduler day names."""
    if field == "*":
        return "*"
    days: set[int] = set()
    for item in field.lower().split(","):
        match = _DAY_ITEM.match(item)
        if match is None:
            raise ConfigError(source, None, f"day of week: cannot read {item[:40]!r}")
        first, last, step = match.groups()
        if first == "*":
            lo, hi = 0, 6
        else:
            lo = _day(first, source)
            hi = _day(last, source) if last is not None else (6 if step is not None else lo)
            if last is not None and hi == 0 and lo > 0:
                hi = 7  # "5-7", "fri-sun": up to Sunday, the week's end
        if hi < lo:
            raise ConfigError(source, None, f"day of week: the range {item!r} runs backwards")
        stride = int(step) if step is not None else 1
        if stride <= 0:
            raise ConfigError(source, None, f"day of week: the step in {item!r} must be at least 1")
        days.update(d % 7 for d in range(lo, hi + 1, stride))
    if len(days) == 7:
        return "*"
    order = (1, 2, 3, 4, 5, 6, 0)  # APScheduler's week starts on Monday
    return ",".join(_CRON_DAYS[d] for d in order if d in days)


def _day(token: str, source: str) -> int:
    if token.isdigit() and int(token) <= 7:
        return int(token) % 7 if token != "7" else 0
    if token[:3] in _CRON_DAYS and len(token) == 3:
        return _CRON_DAYS.index(token)
    raise ConfigError(source, None, f"day of week: {token[:20]!r} is not a day (0-7, 0 and 7 are Sunday, or "
                                    "sun..sat)")


def format_time(ts: float, timezone: str) -> str:
    """A fire time as people read it, in the schedule's zone: ``2026-12-08 02:00:00 CET``."""
    return datetime.fromtimestamp(ts, ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %Z")


def iso_time(ts: float, timezone: str) -> str:
    """A fire time as ISO 8601 with its offset, in the schedule's zone (``status --json``)."""
    return datetime.fromtimestamp(ts, ZoneInfo(timezone)).isoformat()

