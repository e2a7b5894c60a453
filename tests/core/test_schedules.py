"""Scheduled and recurring runs in the core, on a hand-moved clock: no wall-clock waits.

The fire times come from APScheduler's triggers computed on the loop's clock (the
``FakeClock`` here), and the loop's own timers wake the schedule: ``turn()`` fires what is
due. Each run is a normal job (submitted, checked, launched by the fake runner). A schedule
survives a daemon restart, a run missed while the daemon was down is started once or
skipped as ``misfire`` says, and a daemon killed in the middle of a fire neither loses the
run nor starts it twice.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from supervisor.core.submit import SubmitRequest
from supervisor.core.timers import TimerKind
from supervisor.errors import ConfigError, JobNotFound
from supervisor.store.schedules import ScheduleRow, ScheduleState, ScheduleTable
from tests.core.conftest import Core, MakeCore
from tests.support.harness import write_config


def at(text: str) -> float:
    """A UTC wall time as the clock's seconds."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def request(core: Core, name: str = "nightly") -> SubmitRequest:
    path = write_config(core.work, name)
    return SubmitRequest(config_path=str(path), cwd=str(core.work), config_text=path.read_text())


def scheduled_jobs(core: Core, schedule_id: str) -> list[tuple[str, float]]:
    """(job id, fire time) of every job the schedule started, from the jobs' submitted events."""
    found = []
    for job in core.store.list_jobs():
        submitted = core.store.events(job_id=job.id)[0]
        assert submitted.kind == "submitted"
        if submitted.data.get("schedule") == schedule_id:
            found.append((job.id, submitted.data["fire_time"]))
    return found


def row(core: Core, schedule_id: str) -> ScheduleRow:
    return ScheduleTable(core.store).get(schedule_id)


def move_to(core: Core, when: str) -> None:
    core.clock.now = at(when)
    core.turn()


def test_a_cron_schedule_fires_at_its_times_on_the_moved_clock(make_core: MakeCore) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core), cron="0 2 * * *", timezone="UTC")
    assert created.next_run_at == at("2026-12-08 02:00:00")
    # the loop sleeps until the schedule's timer, on its own clock
    assert core.sup.timers.pending(created.id) == {TimerKind.SCHEDULE: at("2026-12-08 02:00:00")}
    assert core.sup.timers.next_due() == at("2026-12-08 02:00:00")

    move_to(core, "2026-12-08 01:59:59")
    assert scheduled_jobs(core, created.id) == []
    move_to(core, "2026-12-08 02:00:00")
    runs = scheduled_jobs(core, created.id)
    assert [fire for _, fire in runs] == [at("2026-12-08 02:00:00")]
    first = core.job(runs[0][0])
    assert first.name == "nightly" and first.created_at == at("2026-12-08 02:00:00")
    assert core.state(first.id).value in ("starting", "running")  # a normal job: the fake runner launched it
    after = row(core, created.id)
    assert (after.runs, after.last_job_id, after.firing_at) == (1, first.id, None)
    assert after.next_run_at == at("2026-12-09 02:00:00")
    assert core.sup.timers.pending(created.id) == {TimerKind.SCHEDULE: at("2026-12-09 02:00:00")}

    move_to(core, "2026-12-08 23:00:00")  # ticks in between start nothing
    core.tick()
    assert len(scheduled_jobs(core, created.id)) == 1
    move_to(core, "2026-12-09 02:00:20")  # a little late (a busy loop): still that night's run, not a misfire
    assert [fire for _, fire in scheduled_jobs(core, created.id)] == [at("2026-12-08 02:00:00"),
                                                                    at("2026-12-09 02:00:00")]
    assert row(core, created.id).skipped == 0


def test_cron_weekdays_are_cron_s_sunday_zero(make_core: MakeCore) -> None:
    """``1-5`` is Monday to Friday as in crontab(5) (APScheduler 3 alone would read Tuesday to Saturday)."""
    core = make_core()
    core.clock.now = at("2026-12-11 12:00:00")  # a Friday
    created = core.sup.schedule(request(core), cron="30 6 * * 1-5", timezone="UTC")
    assert created.next_run_at == at("2026-12-14 06:30:00")  # Monday


def test_an_at_schedule_runs_once_and_is_done(make_core: MakeCore) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core, "once"), at="2026-12-08 02:00", timezone="UTC")
    move_to(core, "2026-12-08 02:00:01")
    assert len(scheduled_jobs(core, created.id)) == 1
    done = row(core, created.id)
    assert (done.state, done.next_run_at, done.runs) == (ScheduleState.DONE, None, 1)
    assert core.sup.timers.pending(created.id) == {}
    move_to(core, "2026-12-09 02:00:01")
    assert len(scheduled_jobs(core, created.id)) == 1


def test_a_schedule_survives_a_daemon_restart(make_core: MakeCore) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core), cron="0 2 * * *", timezone="UTC")
    core.sup.close()

    core.clock.now = at("2026-12-07 18:00:00")
    again = make_core()  # a new daemon on the same state dir
    assert again.sup.timers.pending(created.id) == {TimerKind.SCHEDULE: at("2026-12-08 02:00:00")}
    move_to(again, "2026-12-08 02:00:00")
    assert [fire for _, fire in scheduled_jobs(again, created.id)] == [at("2026-12-08 02:00:00")]


@pytest.mark.parametrize(("misfire", "runs", "skipped"), [("run_once", 1, 2), ("skip", 0, 3)])
def test_runs_missed_while_the_daemon_was_down(make_core: MakeCore, misfire: str, runs: int, skipped: int) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core), cron="0 2 * * *", timezone="UTC", misfire=misfire)
    core.sup.close()

    core.clock.now = at("2026-12-10 09:00:00")  # down over three nights' fire times
    again = make_core()
    again.turn()
    started = scheduled_jobs(again, created.id)
    assert len(started) == runs
    if runs:
        assert started[0][1] == at("2026-12-08 02:00:00")  # the first missed one, started now
        assert again.job(started[0][0]).created_at == at("2026-12-10 09:00:00")
    after = row(again, created.id)
    assert (after.runs, after.skipped) == (runs, skipped)
    assert after.next_run_at == at("2026-12-11 02:00:00")  # the next after now, not a catch-up
    again.turn()
    assert len(scheduled_jobs(again, created.id)) == runs


def test_a_daemon_killed_in_the_middle_of_a_fire_neither_loses_nor_doubles_the_run(make_core: MakeCore) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core), cron="0 2 * * *", timezone="UTC")
    move_to(core, "2026-12-08 02:00:00")
    (job_id, fire), = scheduled_jobs(core, created.id)
    table = ScheduleTable(core.store)
    # killed after the job's insert, before the schedule recorded it
    table.update(created.id, now=core.clock(), firing_at=fire, runs=0, last_job_id=None)
    # a second schedule killed before its run became a job at all
    other = core.sup.schedule(request(core, "other"), cron="0 2 * * *", timezone="UTC")
    table.update(other.id, now=core.clock(), firing_at=at("2026-12-08 02:00:00"))
    core.sup.close()

    again = make_core()
    assert scheduled_jobs(again, created.id) == [(job_id, fire)]  # found by its event: not submitted twice
    assert (row(again, created.id).runs, row(again, created.id).last_job_id) == (1, job_id)
    assert len(scheduled_jobs(again, other.id)) == 1  # never became a job: submitted now, once
    assert row(again, other.id).firing_at is None


def test_unschedule_stops_the_runs(make_core: MakeCore) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    created = core.sup.schedule(request(core), cron="0 2 * * *", timezone="UTC")
    removed = core.sup.unschedule(created.id[:9])  # a unique prefix will do
    assert removed.state is ScheduleState.REMOVED and core.sup.timers.pending(created.id) == {}
    move_to(core, "2026-12-08 02:00:00")
    assert scheduled_jobs(core, created.id) == []
    with pytest.raises(JobNotFound, match="no schedule 'sched-nope'"):
        core.sup.unschedule("sched-nope")


@pytest.mark.parametrize(("rule", "message"), [
    ({"cron": "0 25 * * *"}, "--cron '0 25 * * *': hour: Error validating expression '25': the last value (25) "
                             "is higher than the maximum value (23)"),
    ({"cron": "0 2 * *"}, "--cron '0 2 * *': a cron line has 5 fields"),
    ({"cron": "0 2 * * 8"}, "--cron '0 2 * * 8': day of week: '8' is not a day"),
    ({"at": "2026-12-01 02:00"}, "--at '2026-12-01 02:00': 2026-12-01 02:00:00 UTC is in the past"),
    ({"at": "next tuesday"}, "--at 'next tuesday': not a time"),
])
def test_a_bad_rule_is_one_line_and_keeps_nothing(make_core: MakeCore, tmp_path: Path, rule: dict[str, str],
                                                  message: str) -> None:
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    with pytest.raises(ConfigError) as caught:
        core.sup.schedule(request(core), timezone="UTC", **rule)
    assert caught.value.message.startswith(message) and "\n" not in caught.value.message
    assert ScheduleTable(core.store).select() == [] and core.sup.timers.next_due() is None
    assert not list((tmp_path / "state").glob("schedule-check-*"))


def test_a_config_that_would_not_submit_is_refused_when_scheduled(make_core: MakeCore) -> None:
    """The import check runs at schedule time, as at submit (the fake trainer's --check fails on demand)."""
    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    path = write_config(core.work, "broken", check_error="cannot import 'nowhere.Model'")
    req = SubmitRequest(config_path=str(path), cwd=str(core.work), config_text=path.read_text())
    with pytest.raises(ConfigError, match=r"model\.class_path: cannot import 'nowhere\.Model'"):
        core.sup.schedule(req, cron="0 2 * * *", timezone="UTC")
    assert ScheduleTable(core.store).select() == [] and core.store.list_jobs() == []


def test_a_user_sees_and_removes_only_their_own_schedules(make_core: MakeCore) -> None:
    """Through the API's operations, as ``supervisorctl`` calls them: another user's schedule is "not found"."""
    from supervisor.access import Caller
    from supervisor.api.arguments import BadRequest
    from supervisor.api.ops import Operations

    core = make_core()
    core.clock.now = at("2026-12-07 12:00:00")
    req = request(core)
    ops = Operations(core.sup)  # the daemon's own user: an admin
    mine = ops.op_schedule(config_path=req.config_path, cwd=req.cwd, config_text=req.config_text,
                           cron="0 2 * * *", timezone="UTC")
    assert mine["next_runs"] == ["2026-12-08T02:00:00+00:00", "2026-12-09T02:00:00+00:00",
                                 "2026-12-10T02:00:00+00:00"]
    other = ops.for_caller(Caller(os.getuid() + 4242, admin=False))
    assert other.op_schedules(all=True) == []
    with pytest.raises(JobNotFound, match="no schedule"):
        other.op_unschedule(mine["id"])
    with pytest.raises(BadRequest, match="config_text: required"):  # the daemon reads no file for another user
        other.op_schedule(config_path=req.config_path, cwd=req.cwd, cron="0 2 * * *")
    assert [s["id"] for s in ops.op_schedules()] == [mine["id"]]
    assert ops.op_unschedule(mine["id"])["state"] == "removed"
    assert ops.op_schedules() == [] and [s["state"] for s in ops.op_schedules(all=True)] == ["removed"]
