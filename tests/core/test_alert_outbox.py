"""Every restart and every ending reaches the user exactly once, even when the daemon dies in between.

The alert is written to the store's outbox in the transaction of the restart (or the ending)
and marked sent once the hook has taken it. These tests kill the "daemon" (a dedicated
``BaseException`` from the alert hook, which nothing in the core catches: the loop stops
right there, as under SIGKILL) and open a new core on the same store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.alerts import AlertDispatcher, make_alert, read_alerts
from supervisor.alerts.events import AlertEvent, GpuFaultAlert, RebootAlert, RestartAlert, StoppedAlert
from supervisor.gpu import GpuEvent
from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState
from supervisor.store import JobRow
from tests.core.conftest import Core, MakeCore


class DaemonKilled(BaseException):
    """The daemon died here (a BaseException: the core's "alerts never break supervision" guard lets it by)."""


def _running(core: Core) -> str:
    job_id = core.submit()
    core.runner.start(job_id, 1)
    core.tick()
    assert core.state(job_id) is JobState.RUNNING
    return job_id


def _die_in_the_hook(core: Core, then: list[tuple[str, AlertEvent]] | None = None) -> None:
    """The next alert kills the daemon: before the hook delivers it (``then`` None), or after."""

    def hook(job: JobRow, what: AlertEvent) -> None:
        if then is not None:
            then.append((job.id, what))
        raise DaemonKilled

    core.sup.alert_hook = hook


def test_a_restart_whose_alert_was_lost_to_a_daemon_kill_is_alerted_once_by_the_next_daemon(
        make_core: MakeCore) -> None:
    core = make_core()
    job_id = _running(core)
    _die_in_the_hook(core)
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    with pytest.raises(DaemonKilled):
        core.turn()
    assert core.job(job_id).restarts == 1  # the restart is committed; its alert never left
    core.sup.close()

    again = make_core(core.runner)  # the daemon restarts on the same store
    again.turn()
    restarts = [(j, what) for j, what in again.alerts if isinstance(what, RestartAlert)]
    assert len(restarts) == 1, again.alerts
    alerted, what = restarts[0]
    assert alerted == job_id and (what.cause, what.attempt, what.restarts) == ("crash", 2, 1)
    restart_event = [e for e in again.store.events(job_id=job_id) if e.kind == "restart"]
    assert what.alert_id == f"{job_id}-event-{restart_event[0].id}"
    again.sup.close()

    third = make_core(core.runner)  # marked sent: nobody sends it again
    third.turn()
    assert [w for _, w in third.alerts if isinstance(w, RestartAlert)] == []


def test_an_ending_whose_alert_was_lost_is_alerted_by_the_next_daemon(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _running(core)
    core.sup.stop_job(job_id)
    _die_in_the_hook(core)
    core.runner.end(job_id, 1, exit_code=None, signal="SIGTERM", ended_at=core.clock())
    with pytest.raises(DaemonKilled):
        core.turn()
    assert core.state(job_id) is JobState.STOPPED
    core.sup.close()

    again = make_core(core.runner)
    again.turn()
    ended = [what for _, what in again.alerts if isinstance(what, StoppedAlert)]
    assert [(w.end_reason, w.attempts) for w in ended] == [("user", 1)]


def test_a_daemon_killed_after_recording_the_alert_does_not_record_it_twice(
        make_core: MakeCore, tmp_path: Path) -> None:
    """Sent (recorded in alerts.jsonl) but not yet marked sent: the next daemon re-sends, the file dedups."""
    state = tmp_path / "state"
    kill_after_send = [True]

    def hook(job: JobRow, what: AlertEvent) -> None:
        # As the daemon's hook does: a fresh dispatcher each "daemon life", on the same state dir.
        AlertDispatcher(state).send(make_alert(what.event, job_id=job.id, job_name=job.name,
                                               details=what.details(), wandb=None, alert_id=what.alert_id))
        if kill_after_send[0]:
            raise DaemonKilled

    core = make_core(alert_hook=hook)
    job_id = _running(core)
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    with pytest.raises(DaemonKilled):
        core.turn()
    assert [a.alert for a in core.store.pending_alerts()] == ["restart"]  # recorded, still owed
    core.sup.close()

    kill_after_send[0] = False
    again = make_core(core.runner, alert_hook=hook)  # opening sends what is owed
    assert again.store.pending_alerts() == []
    restarts = [a for a in read_alerts(state, job_id=job_id) if a["event"] == "restart"]
    assert len(restarts) == 1 and restarts[0]["alert_id"].startswith(f"{job_id}-event-")


def test_a_gpu_fault_alert_lost_to_a_daemon_kill_is_sent_by_the_next_daemon(make_core: MakeCore) -> None:
    core = make_core()
    job_id = _running(core)
    core.store.update_attempt(job_id, 1, gpus=[0])
    _die_in_the_hook(core)
    with pytest.raises(DaemonKilled):
        core.sup.on_gpu_event(GpuEvent(index=0, kind="xid", health="failed", reason="Xid 79", xid=79))
    job = core.job(job_id)
    assert job.state is JobState.STOPPING and job.stop_intent == Cause.GPU_FAULT  # the stop is committed
    assert [a.alert for a in core.store.pending_alerts()] == ["gpu_fault"]
    core.sup.close()

    again = make_core(core.runner)
    faults = [what for _, what in again.alerts if isinstance(what, GpuFaultAlert)]
    assert [(w.gpu, w.fault, w.attempt) for w in faults] == [(0, "Xid 79", 1)]
    assert again.store.pending_alerts() == []


def test_reboot_alerts_lost_to_a_daemon_kill_are_sent_by_the_next_daemon(
        make_core: MakeCore) -> None:
    core = make_core()
    jobs = [_running(core) for _ in range(2)]
    for job_id in jobs:
        core.runner.attempts[(job_id, 1)].boot_id = "boot-0"  # started before a reboot
    sent: list[tuple[str, AlertEvent]] = []
    _die_in_the_hook(core, then=sent)
    core.sup.boot_id = "boot-2"  # as a daemon started after the reboot: its reconcile, and the first alert kills it
    with pytest.raises(DaemonKilled):
        core.sup.reconcile()
    assert len(sent) == 1  # one alert left before the daemon died; the rest are owed
    core.sup.close()

    again = make_core(core.runner, boot_id="boot-2")
    delivered = [*sent, *again.alerts]
    # At-least-once: the one delivered before the kill was not marked sent, so it comes again with the
    # same alert_id (alerts.jsonl records it once: tests/alerts/test_alert_dedup.py).
    reboots = {w.alert_id: (j, w) for j, w in delivered if isinstance(w, RebootAlert)}
    assert sorted(j for j, _ in reboots.values()) == sorted(jobs)  # one per job
    _, first = next(iter(reboots.values()))
    assert sorted(first.jobs) == sorted(jobs)  # the first daemon had seen both before acting on either
    assert all(j in w.jobs and w.boot_id == "boot-2" for j, w in reboots.values())
    restarts = {w.alert_id: j for j, w in delivered if isinstance(w, RestartAlert)}
    assert sorted(restarts.values()) == sorted(jobs)
