"""The fire times of scheduled runs (``core/schedule_times.py``): APScheduler's triggers on the caller's clock.

Pure: no store, no loop. The clock is whatever number the test passes as "now", years
away from the wall clock, and the fire times follow it (APScheduler alone would start its
triggers at the wall clock's now).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from supervisor.core.schedule_times import MAX_COUNTED, format_time, iso_time, parse_when
from supervisor.errors import ConfigError


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def fires(cron: str, now: str, count: int = 3, timezone: str = "UTC") -> list[str]:
    when = parse_when(at=None, cron=cron, timezone=timezone, now=utc(now))
    return [format_time(t, timezone) for t in when.upcoming(utc(now), created_at=utc(now), count=count)]


def test_fire_times_follow_the_given_clock_not_the_wall_clock() -> None:
    assert fires("0 2 * * *", "2001-03-04 12:00:00") == [
        "2001-03-05 02:00:00 UTC", "2001-03-06 02:00:00 UTC", "2001-03-07 02:00:00 UTC"]


def test_the_next_fire_is_strictly_after_now() -> None:
    when = parse_when(at=None, cron="0 2 * * *", timezone="UTC", now=utc("2026-12-07 12:00:00"))
    created = utc("2026-12-07 12:00:00")
    assert when.next_after(utc("2026-12-08 02:00:00"), created_at=created) == utc("2026-12-09 02:00:00")
    assert when.next_after(utc("2026-12-08 01:59:59.5"), created_at=created) == utc("2026-12-08 02:00:00")


@pytest.mark.parametrize(("cron", "days"), [
    ("0 9 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]),
    ("0 9 * * 0", ["Sun", "Sun"]),
    ("0 9 * * 7", ["Sun", "Sun"]),
    ("0 9 * * 5-7", ["Fri", "Sat", "Sun", "Fri"]),
    ("0 9 * * sat,sun", ["Sat", "Sun", "Sat"]),
    ("0 9 * * fri-sun", ["Fri", "Sat", "Sun", "Fri"]),
    ("0 9 * * */2", ["Tue", "Thu", "Sat", "Sun", "Tue"]),  # 0, 2, 4, 6 as cron counts
    ("@weekly", ["Sun", "Sun"]),
])
def test_weekdays_are_read_as_crontab_reads_them(cron: str, days: list[str]) -> None:
    when = parse_when(at=None, cron=cron, timezone="UTC", now=utc("2026-12-06 12:00:00"))  # a Sunday, after 09:00
    times = when.upcoming(utc("2026-12-06 12:00:00"), created_at=0, count=len(days))
    assert [datetime.fromtimestamp(t, UTC).strftime("%a") for t in times] == days


def test_a_zone_s_local_time_and_its_daylight_saving() -> None:
    # 02:00 in Berlin is 01:00 UTC in winter and 00:00 UTC in summer; on 29 March 2026 the clocks jump from
    # 02:00 to 03:00, and that night's run is at 03:00 CEST (01:00 UTC)
    assert [iso_time(t, "UTC") for t in parse_when(at=None, cron="0 2 * * *", timezone="Europe/Berlin",
                                                    now=utc("2026-03-27 12:00:00")).upcoming(
        utc("2026-03-27 12:00:00"), created_at=0, count=3)] == [
        "2026-03-28T01:00:00+00:00", "2026-03-29T01:00:00+00:00", "2026-03-30T00:00:00+00:00"]
    at = parse_when(at="2026-12-08 02:00", cron=None, timezone="Europe/Berlin", now=utc("2026-12-07 12:00:00"))
    assert at.next_after(utc("2026-12-07 12:00:00"), created_at=0) == utc("2026-12-08 01:00:00")
    assert at.next_after(utc("2026-12-08 01:00:00"), created_at=0) is None  # it fired: never again
    with_offset = parse_when(at="2026-12-08T02:00:00+05:00", cron=None, timezone="UTC", now=0)
    assert with_offset.next_after(0, created_at=0) == utc("2026-12-07 21:00:00")


def test_missed_fire_times_are_counted_with_a_cap() -> None:
    when = parse_when(at=None, cron="0 2 * * *", timezone="UTC", now=0)
    assert when.missed(utc("2026-12-08 02:00:00"), utc("2026-12-10 09:00:00"), created_at=0) == 3
    minutely = parse_when(at=None, cron="* * * * *", timezone="UTC", now=0)
    assert minutely.missed(utc("2026-01-01 00:00:00"), utc("2026-02-01 00:00:00"), created_at=0) == MAX_COUNTED


@pytest.mark.parametrize(("rule", "message"), [
    ({"cron": "0 25 * * *"}, "--cron '0 25 * * *': hour: Error validating expression '25': the last value (25) is "
                             "higher than the maximum value (23)"),
    ({"cron": "x * * * *"}, "--cron 'x * * * *': minute: Unrecognized expression \"x\" for field \"minute\""),
    ({"cron": "0 2 * *"}, "--cron '0 2 * *': a cron line has 5 fields (minute hour day-of-month month day-of-week) "
                          "or is one of @annually, @daily, @hourly, @midnight, @monthly, @weekly, @yearly; got 4 "
                          "fields"),
    ({"cron": "0 2 1 * 1"}, "--cron '0 2 1 * 1': give a day of month or a day of week, not both"),
    ({"cron": "0 2 * * 5-1"}, "--cron '0 2 * * 5-1': day of week: the range '5-1' runs backwards"),
    ({"cron": "0 2 * * 8"}, "--cron '0 2 * * 8': day of week: '8' is not a day (0-7, 0 and 7 are Sunday, or "
                            "sun..sat)"),
    ({"at": "2026-12-01 02:00"}, "--at '2026-12-01 02:00': 2026-12-01 02:00:00 UTC is in the past (it is "
                                 "2026-12-07 12:00:00 UTC)"),
    ({"at": "2026-02-30"}, "--at '2026-02-30': not a time"),
    ({"cron": "@daily", "timezone": "Europe/../UTC"}, "--tz: unknown time zone 'Europe/../UTC'"),
    ({}, "schedule: give either --at TIME or --cron LINE"),
])
def test_a_bad_rule_is_one_line(rule: dict[str, str], message: str) -> None:
    args = {"at": None, "cron": None, "timezone": "UTC", **rule}
    with pytest.raises(ConfigError) as caught:
        parse_when(**args, now=utc("2026-12-07 12:00:00"))  # type: ignore[arg-type]
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message
