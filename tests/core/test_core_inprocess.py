"""The core in-process: a real Supervisor and store, a fake runner, a hand-moved clock (no waits)."""

from __future__ import annotations

import sqlite3

import pytest

from supervisor.alerts import make_alert
from supervisor.alerts.events import RestartAlert, StoppedAlert
from supervisor.core.timers import TimerKind
from supervisor.errors import SupervisorError
from supervisor.jobfiles.heartbeat import Heartbeat, write_heartbeat
from supervisor.rules.causes import Cause
from supervisor.rules.states import JobState
from supervisor.runners.base import LaunchRefused, Phase
from tests.core.conftest import MakeCore
from tests.support.fake_runner import FakeRunner


def test_a_launched_attempt_is_starting_until_its_trainer_runs(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit()
    assert core.state(job_id) is JobState.STARTING
    assert core.runner.ops("launch") == [(job_id, 1)]
    attempt = core.store.last_attempt(job_id)
    assert attempt is not None and attempt.runner_kind == "fake" and attempt.runner_state == {"fake_attempt": 1}
    spec = core.runner.attempts[(job_id, 1)].spec
    assert spec is not None and spec.ranks.world_size == 1 and spec.resume_from is None
    assert "--attempt" in spec.command and spec.env["ML_SUPERVISOR_JOB_ID"] == job_id

    core.tick()  # nothing runs yet: still starting
    assert core.state(job_id) is JobState.STARTING

    core.runner.start(job_id, 1)
    core.clock.advance(0.2)  # the "started" timer: no tick needed
    core.turn()
    assert core.state(job_id) is JobState.RUNNING
    attempt = core.store.last_attempt(job_id)
    assert attempt is not None and attempt.pid == core.runner.attempts[(job_id, 1)].pid
    assert attempt.runner_state["pid"] == attempt.pid  # the runner's learned state is persisted


def test_a_crash_is_classified_and_relaunched_at_once(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit()
    core.runner.start(job_id, 1)
    core.tick()
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    core.turn()  # the runner's notice wakes the job: no tick
    first, second = core.store.attempts(job_id)
    assert (first.reason, first.detail, first.exit_code) == (Cause.CRASH, "exited with code 1", 1)
    assert second.n == 2 and core.state(job_id) is JobState.STARTING
    assert core.job(job_id).restarts == 1
    assert job_id in core.runner.forgotten  # the ended attempt's handles are closed
    assert core.runner.released == []  # a restart: what the runner holds for the next attempt stays (Slurm)

    ((alerted, what),) = core.alerts
    assert alerted == job_id and isinstance(what, RestartAlert)
    assert (what.cause, what.attempt, what.restarts, what.delay_s) == ("crash", 2, 1, 0.0)
    alert = make_alert(what.event, job_id=job_id, job_name="job", details=what.details(), wandb=None)
    assert alert.text.count("exited with code 1") == 1, alert.text  # the error is told once


def test_stop_escalates_to_a_kill_after_the_grace_period(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit(supervision={"stop_grace": "30s"})
    core.runner.start(job_id, 1)
    core.tick()
    core.sup.stop_job(job_id)
    assert core.state(job_id) is JobState.STOPPING
    assert core.runner.ops("graceful_stop") == [(job_id, 1)]
    assert core.sup.timers.pending(job_id)[TimerKind.ESCALATE] == core.clock() + 30

    core.clock.advance(29)
    core.tick()
    assert core.runner.ops("kill") == []  # still within the grace period

    core.clock.advance(2)
    core.tick()
    assert core.runner.ops("kill") == [(job_id, 1)]
    assert "sigkill" in core.events(job_id)

    core.runner.end(job_id, 1, exit_code=None, signal="SIGKILL", ended_at=core.clock())
    core.turn()
    job = core.job(job_id)
    assert (job.state, job.end_reason) == (JobState.STOPPED, "user")
    attempt = core.store.last_attempt(job_id)
    assert attempt is not None and attempt.reason == Cause.USER_STOP
    assert core.sup.timers.pending(job_id) == {}  # cancel_all on finish
    assert core.runner.released == [job_id]  # the job ended: a held Slurm allocation would be given back
    ended = [what for _, what in core.alerts if isinstance(what, StoppedAlert)]
    assert [(a.end_reason, a.attempts) for a in ended] == [("user", 1)]
    assert job_id not in core.sup.tracker.tracked_jobs()


def test_a_hang_saves_stacks_before_the_graceful_stop_and_waits_at_most_5s(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit(supervision={"stop_grace": "60s"})
    core.runner.start(job_id, 1)
    core.tick()
    core.sup.begin_stop(core.job(job_id), Cause.HANG, "hang: no progress", core.clock())
    ops = [op for op, _, _ in core.runner.calls]
    assert ops.index("dump_stacks") < ops.index("graceful_stop")
    assert core.job(job_id).stop_deadline == core.clock() + 5


def test_the_budget_ends_a_job_waiting_in_backoff(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit(supervision={"budget": "100s"})
    core.runner.start(job_id, 1)
    core.tick()
    core.clock.advance(95)
    core.runner.refuse = LaunchRefused("no such executable", retry=False)  # the relaunch fails: backoff 10 s
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    core.turn()
    job = core.job(job_id)
    assert job.state is JobState.BACKOFF and job.next_start_at == core.clock() + 10

    core.clock.advance(6)  # the budget (t0 + 100) ends before the backoff (t0 + 105)
    core.turn()  # the budget timer alone wakes the job
    job = core.job(job_id)
    assert (job.state, job.end_reason) == (JobState.COMPLETED, "budget")
    assert core.runner.ops("launch") == [(job_id, 1)]


def test_a_degraded_gpu_asks_the_runner_for_a_checkpoint_and_a_failed_one_stops(make_core: MakeCore) -> None:
    from supervisor.gpu import GpuEvent

    core = make_core()
    job_id = core.submit()
    core.runner.start(job_id, 1)
    core.tick()
    core.store.update_attempt(job_id, 1, gpus=[0])
    core.sup.on_gpu_event(GpuEvent(index=0, kind="health", health="degraded", reason="gpu 0 at 88 C"))
    assert core.runner.ops("request_checkpoint") == [(job_id, 1)]
    core.sup.on_gpu_event(GpuEvent(index=0, kind="xid", health="failed", reason="Xid 79", xid=79))
    job = core.job(job_id)
    assert job.state is JobState.STOPPING and job.stop_intent == Cause.GPU_FAULT


def _running_jobs(core_factory: MakeCore, n: int) -> tuple[list[str], FakeRunner]:
    core = core_factory()
    jobs = [core.submit(f"job{i}") for i in range(n)]
    for job_id in jobs:
        core.runner.start(job_id, 1)
    core.tick()
    assert all(core.state(j) is JobState.RUNNING for j in jobs)
    core.sup.close()
    return jobs, core.runner


def test_reconcile_adopts_collects_relaunches_after_a_reboot_and_after_vanishing(make_core: MakeCore) -> None:
    (adopt, collect, rebooted, vanished), runner = _running_jobs(make_core, 4)
    runner.end(collect, 1, exit_code=1, ended_at=1.0)
    runner.attempts[(rebooted, 1)].boot_id = "boot-0"  # started in an earlier boot
    runner.end(vanished, 1, vanished=True)
    runner.calls.clear()

    core = make_core(runner)  # a daemon restart: same store, same runner state
    core.turn()
    assert core.runner.ops("adopt") == [(adopt, 1)]
    assert core.state(adopt) is JobState.RUNNING and "adopted" in core.events(adopt)

    reasons = {j: core.store.attempts(j)[0].reason for j in (adopt, collect, rebooted, vanished)}
    assert reasons == {adopt: None, collect: Cause.CRASH, rebooted: Cause.REBOOT, vanished: Cause.VANISHED}
    assert "collected" in core.events(collect) and "reboot" in core.events(rebooted)
    assert sorted(core.runner.ops("kill")) == sorted([(rebooted, 1), (vanished, 1)])
    # each ended one is relaunched (a reboot and a first failure restart at once)
    assert [len(core.store.attempts(j)) for j in (collect, rebooted, vanished)] == [2, 2, 2]


def test_an_unknown_runner_kind_in_the_store_is_a_clear_error(make_core: MakeCore) -> None:
    _, runner = _running_jobs(make_core, 1)
    runner.kind = "other"
    with pytest.raises(SupervisorError, match="started by the runner 'fake', which this daemon does not have"):
        make_core(runner)


def test_observing_never_sees_a_pending_attempt_as_ended(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit()
    assert core.runner.attempts[(job_id, 1)].phase is Phase.PENDING
    for _ in range(3):
        core.clock.advance(1)
        core.tick()
    assert core.state(job_id) is JobState.STARTING


def test_a_trainer_whose_heartbeat_stops_is_stopped_as_hung(make_core: MakeCore) -> None:
    core = make_core()
    job_id = core.submit(supervision={"hang_timeout": "2m"})
    core.runner.start(job_id, 1)
    core.tick()
    spec = core.runner.attempts[(job_id, 1)].spec
    assert spec is not None
    beat_path = spec.attempt_dir / "heartbeat.json"
    beat_path.parent.mkdir(parents=True, exist_ok=True)
    write_heartbeat(beat_path, Heartbeat(pid=1, attempt=1, time=core.clock(), started_at=core.clock(),
                                         phase="train", step=10, step_time=0.1, max_step_time=0.1))
    core.clock.advance(119)
    core.tick()
    assert core.state(job_id) is JobState.RUNNING  # silent for 119 s of a 120 s timeout
    core.clock.advance(2)
    core.tick()
    job = core.job(job_id)
    assert (job.state, job.stop_intent) == (JobState.STOPPING, Cause.HANG)
    assert core.runner.ops("dump_stacks") == [(job_id, 1)]
    core.runner.end(job_id, 1, exit_code=None, signal="SIGKILL", ended_at=core.clock())
    core.turn()
    first = core.store.attempts(job_id)[0]
    assert first.reason == Cause.HANG and "hang" in (first.detail or "")
    assert [type(what).__name__ for _, what in core.alerts] == ["HangAlert"]


def test_queue_wait_does_not_eat_the_start_up_allowance(make_core: MakeCore) -> None:
    # A Slurm attempt may wait in the queue (pending) for longer than the start-up allowance:
    # the allowance counts from the moment the runner reports it running, not from the submission.
    core = make_core()
    job_id = core.submit(supervision={"hang_timeout": "auto"})
    allowance = core.sup.settings.hang.startup_allowance
    core.clock.advance(allowance + 60)  # pending all that time: neither hung nor failed
    core.tick()
    assert core.state(job_id) is JobState.STARTING
    core.runner.start(job_id, 1)
    core.tick()
    core.clock.advance(allowance - 1)  # running, no heartbeat yet, inside the allowance
    core.tick()
    assert core.state(job_id) is JobState.RUNNING
    core.clock.advance(2)
    core.tick()
    job = core.job(job_id)
    assert (job.state, job.stop_intent) == (JobState.STOPPING, Cause.HANG)


def test_a_queued_attempt_is_stopped_when_the_budget_is_spent(make_core: MakeCore) -> None:
    # Queue wait counts against the budget: an attempt still pending at the deadline is cancelled.
    core = make_core()
    job_id = core.submit(supervision={"budget": "10m"})
    core.clock.advance(9 * 60)
    core.tick()
    assert core.state(job_id) is JobState.STARTING and core.runner.ops("graceful_stop") == []
    core.clock.advance(61)
    core.tick()
    job = core.job(job_id)
    assert (job.state, job.stop_intent) == (JobState.STOPPING, Cause.BUDGET)
    assert core.runner.ops("graceful_stop") == [(job_id, 1)]


def test_a_crash_on_a_full_disk_waits_in_backoff_and_is_not_counted(make_core: MakeCore) -> None:
    # issue 11, item 3: the trainer's exit record says the checkpoint could not be saved for lack of space
    from pathlib import Path

    from supervisor.jobfiles.exitrecord import ExitRecord, write_exit_record
    from supervisor.jobfiles.layout import JobLayout

    core = make_core()
    job_id = core.submit(supervision={"max_restarts": 0})  # any counted failure would end the job
    core.runner.start(job_id, 1)
    core.tick()
    message = "[Errno 28] cannot save checkpoint last.ckpt: disk full (0 MiB free on /ckpt)"
    record_path = JobLayout(Path(core.job(job_id).job_dir)).attempt(1).exit_record
    record_path.parent.mkdir(parents=True, exist_ok=True)  # the fake runner starts no monitor to make it
    write_exit_record(record_path,
                      ExitRecord(status="exception", time=core.clock(), pid=1,
                                 exception={"type": "CheckpointSaveError", "message": message, "traceback": ""}))
    core.runner.end(job_id, 1, exit_code=1, ended_at=core.clock())
    core.turn()
    (first,) = core.store.attempts(job_id)
    assert first.reason == Cause.CRASH and "disk full" in (first.detail or "")
    job = core.job(job_id)
    assert job.state is JobState.BACKOFF  # not failed/max_restarts
    assert job.next_start_at is not None and job.next_start_at > core.clock()
    assert any("not counted toward max_restarts" in e.message for e in core.store.events(job_id=job_id))


def test_a_submit_whose_insert_fails_leaves_no_job_dir(make_core: MakeCore, monkeypatch: pytest.MonkeyPatch) -> None:
    core = make_core()
    jobs_dir = core.sup.jobs_dir

    def full_disk(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    insert_job = core.store.insert_job
    monkeypatch.setattr(core.store, "insert_job", full_disk)
    with pytest.raises(sqlite3.OperationalError):
        core.submit()
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []  # made for the import check, then removed
    monkeypatch.setattr(core.store, "insert_job", insert_job)
    job_id = core.submit()  # the next submit is whole
    assert [j.id for j in core.store.list_jobs()] == [job_id]


def test_a_first_launch_that_fails_waits_in_backoff_and_tries_again(make_core: MakeCore) -> None:
    core = make_core()
    core.runner.refuse = LaunchRefused("no such executable", retry=False)  # attempt 1 cannot start at all
    job_id = core.submit()
    job = core.job(job_id)
    assert job.state is JobState.BACKOFF and job.next_start_at == core.clock() + 10  # was an InvalidTransition
    assert "launch_failed" in core.events(job_id)
    core.runner.refuse = None
    core.clock.advance(10)
    core.turn()
    assert core.state(job_id) is JobState.STARTING and core.runner.ops("launch") == [(job_id, 1)]
