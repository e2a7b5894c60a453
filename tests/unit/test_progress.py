"""Progress, speed, ETA and the cost of faults (``rules/progress.py``) over synthetic histories, with a moved
clock: every number is worked out by hand from the history each test builds."""

from __future__ import annotations

import pytest

from supervisor.rules.progress import (
    AttemptTrace,
    Point,
    compute,
    fault_cost,
    step_limits,
    steps_per_epoch,
    steps_per_second,
    target,
)

T0 = 1_700_000_000.0


def run(n: int, start: float, end: float, from_step: int, rate: float, *, every: float = 2.0,
        ended: float | None = None, cause: str | None = None, resume_step: int | None = None,
        first_step_at: float | None = None, epoch_len: int | None = None) -> AttemptTrace:
    """An attempt that trained at ``rate`` steps/s from ``start`` to ``end`` (samples every ``every`` s)."""
    points = []
    t = start
    while t <= end + 1e-9:
        step = from_step + round((t - start) * rate)
        points.append(Point(T0 + t, step, step // epoch_len if epoch_len else None))
        t += every
    return AttemptTrace(n=n, started_at=T0 + start - 5, ended_at=None if ended is None else T0 + ended, cause=cause,
                        resume_step=from_step if resume_step is None else resume_step,
                        first_step_at=T0 + (start if first_step_at is None else first_step_at),
                        points=tuple(points))


def progress(attempts: list[AttemptTrace], step: int, now: float, *, live: bool = True,
             max_steps: int | None = None, max_epochs: int | None = None, per_epoch: int | None = None,
             budget_s: float | None = None, used_s: float | None = None) -> dict:
    used = (now - (attempts[0].started_at - T0)) if used_s is None else used_s
    return compute(attempts=attempts, step=step, now=T0 + now, job_live=live, max_steps=max_steps,
                   max_epochs=max_epochs, per_epoch=per_epoch, budget_s=budget_s, used_s=used).as_dict()


def test_one_steady_attempt_percent_speed_and_eta() -> None:
    a = run(1, 0, 50, 0, 10)  # 500 steps in 50 s
    p = progress([a], step=500, now=50, max_steps=1000)
    assert p["target_step"] == 1000 and p["target_from"] == "max_steps"
    assert p["percent"] == 50.0
    assert p["steps_per_s"] == pytest.approx(10.0)
    assert p["eta_s"] == pytest.approx(50.0)
    assert p["ends_by"] == "target"
    assert p["lost_s"] == 0 and p["restarts"] == [] and p["recomputed_steps"] == 0


def test_the_speed_is_the_recent_window_not_the_whole_run() -> None:
    # 10 steps/s for 200 s, then 4 steps/s for the last 100 s: the 60 s window sees only the slow part
    fast = [Point(T0 + t, 10 * t) for t in range(0, 201, 2)]
    slow = [Point(T0 + 200 + t, 2000 + 4 * t) for t in range(2, 101, 2)]
    a = AttemptTrace(n=1, started_at=T0, points=tuple(fast + slow))
    assert steps_per_second([a]) == pytest.approx(4.0)
    assert steps_per_second([a], window=400) == pytest.approx(2400 / 300)


def test_a_long_validation_does_not_read_as_a_stop() -> None:
    # 10 steps/s until t=100, then 90 s of validation (the heartbeat's time moves, its step does not)
    points = [Point(T0 + t, 10 * t) for t in range(0, 101, 2)] + [Point(T0 + 190, 1000)]
    a = AttemptTrace(n=1, started_at=T0, points=tuple(points))
    # the window is the 60 s before the last step (t=40..100) up to now: the validation slows it, gradually
    assert steps_per_second([a]) == pytest.approx(600 / 150)
    resumed = AttemptTrace(n=1, started_at=T0, points=(*points, Point(T0 + 192, 1020), Point(T0 + 194, 1040)))
    # training again: the window (134..194) starts at the validation's end, and the speed is the steps' own
    assert steps_per_second([resumed]) == pytest.approx(40 / 4)


def test_the_speed_never_spans_the_downtime_between_attempts() -> None:
    first = run(1, 0, 100, 0, 20, ended=101, cause="crash")
    second = run(2, 400, 430, 1500, 5, resume_step=1500)  # 5 steps/s after a restart 300 s later
    assert steps_per_second([first, second]) == pytest.approx(5.0)
    # before the new attempt has two samples: the previous attempt's speed, not (steps) / (time incl. downtime)
    starting = AttemptTrace(n=2, started_at=T0 + 400, resume_step=1500)
    assert steps_per_second([first, starting]) == pytest.approx(20.0)
    # no samples at all: the heartbeat's mean step time
    assert steps_per_second([AttemptTrace(n=1, started_at=T0, step_time=0.25)]) == pytest.approx(4.0)
    assert steps_per_second([AttemptTrace(n=1, started_at=T0)]) is None


def test_a_crash_costs_its_downtime_and_the_steps_past_the_checkpoint() -> None:
    # attempt 1: 10 steps/s, 0 -> 300 by t=30, crashes at t=31; checkpoint at 200
    # attempt 2: resumes from step 200, first step at t=41, 10 steps/s
    first = run(1, 0, 30, 0, 10, ended=31, cause="crash")
    second = run(2, 41, 71, 200, 10)
    p = progress([first, second], step=500, now=71, max_steps=1000)
    assert p["downtime_s"] == pytest.approx(11.0)  # last progress (t=30) -> the next first step (t=41)
    assert p["recomputed_steps"] == 100  # 200..300 made twice
    assert p["lost_s"] == pytest.approx(11.0 + 100 * 0.1)
    assert p["lost_share"] == pytest.approx(21.0 / 76.0, abs=1e-4)  # of the wall clock since the first start
    assert p["restarts"] == [{"attempt": 2, "after": "crash", "resumed_step": 200, "reached_step": 300,
                              "downtime_s": 11.0}]


def test_a_rewind_to_the_best_checkpoint_throws_away_more() -> None:
    first = run(1, 0, 30, 0, 10, ended=31, cause="crash")
    rewound = run(2, 41, 71, 100, 10)  # best was at step 100, not the newest at 200
    p = progress([first, rewound], step=400, now=71, max_steps=1000)
    assert p["recomputed_steps"] == 200
    assert p["lost_s"] == pytest.approx(11.0 + 200 * 0.1)


def test_a_hang_counts_from_the_last_heartbeat_not_from_the_kill() -> None:
    # attempt 1's heartbeats stop at t=30; the hang is detected and the attempt killed at t=100
    hung = run(1, 0, 30, 0, 10, ended=100, cause="hang")
    second = run(2, 110, 130, 300, 10)
    p = progress([hung, second], step=500, now=130, max_steps=1000)
    assert p["downtime_s"] == pytest.approx(80.0)
    assert p["recomputed_steps"] == 0  # it resumed exactly where it stopped


def test_the_cost_of_each_work_thrown_away_is_priced_at_that_attempts_speed() -> None:
    # attempt 1 makes 0..100 at 10/s and crashes; attempt 2 resumes at 50, makes 50..80 at 5/s and crashes;
    # attempt 3 resumes at 50 again: 1's 50..100 and 2's 50..80 are both thrown away
    a1 = run(1, 0, 10, 0, 10, ended=11, cause="crash")
    a2 = run(2, 20, 26, 50, 5, ended=27, cause="gpu_fault")
    a3 = run(3, 40, 60, 50, 10)
    p = progress([a1, a2, a3], step=250, now=60, max_steps=1000)
    assert p["recomputed_steps"] == 50 + 30
    assert p["downtime_s"] == pytest.approx((20 - 10) + (40 - 26))
    assert p["lost_s"] == pytest.approx(24 + 50 * 0.1 + 30 * 0.2)
    assert [r["attempt"] for r in p["restarts"]] == [2, 3]


def test_a_users_stop_or_restart_and_the_budget_are_not_faults() -> None:
    stopped = run(1, 0, 30, 0, 10, ended=31, cause="user_stop")
    later = run(2, 1000, 1030, 100, 10)  # resumed from best, hours later
    assert fault_cost([stopped, later], T0 + 1030, job_live=True).lost_s == 0
    restarted = run(1, 0, 30, 0, 10, ended=31, cause="user_restart")
    assert fault_cost([restarted, run(2, 41, 50, 100, 10)], T0 + 50, job_live=True).lost_s == 0


def test_downtime_keeps_counting_while_the_job_waits_to_restart() -> None:
    crashed = run(1, 0, 30, 0, 10, ended=31, cause="crash")
    assert progress([crashed], step=300, now=45, max_steps=1000)["downtime_s"] == pytest.approx(15.0)
    assert progress([crashed], step=300, now=75, max_steps=1000)["downtime_s"] == pytest.approx(45.0)
    # a new attempt still importing: its wait counts too, up to now
    starting = AttemptTrace(n=2, started_at=T0 + 40, resume_step=300)
    assert progress([crashed, starting], step=300, now=90, max_steps=1000)["downtime_s"] == pytest.approx(60.0)
    # an attempt that crashed before its first step: the whole of it is downtime, seamlessly
    died = AttemptTrace(n=2, started_at=T0 + 40, ended_at=T0 + 50, cause="crash", resume_step=300)
    third = run(3, 70, 80, 300, 10)
    p = progress([crashed, died, third], step=400, now=80, max_steps=1000)
    assert p["downtime_s"] == pytest.approx(70 - 30)
    # a failed job is not waiting for anything: the time after its end is not lost
    assert progress([crashed], step=300, now=500, live=False, max_steps=1000)["downtime_s"] == 0


def test_the_budget_ends_first() -> None:
    a = run(1, 0, 100, 0, 10)  # 1000 steps in 100 s
    p = progress([a], step=1000, now=100, max_steps=10_000, budget_s=600, used_s=105)
    assert p["eta_s"] == pytest.approx(900.0)  # to the target, at 10 steps/s
    assert p["ends_by"] == "budget"  # 495 s of budget left
    p = progress([a], step=1000, now=100, max_steps=10_000, budget_s=3600, used_s=105)
    assert p["ends_by"] == "target"


def test_a_job_without_a_step_target_runs_to_its_budget() -> None:
    a = run(1, 0, 100, 0, 10)
    limits = step_limits(-1, -1)  # Lightning: max_epochs=-1, no max_steps: no end but the budget
    assert limits == (None, None)
    p = progress([a], step=1000, now=100, max_steps=limits[0], max_epochs=limits[1], budget_s=1000, used_s=250)
    assert p["target_from"] == "budget"
    assert p["percent"] == 25.0
    assert p["eta_s"] == pytest.approx(750.0)
    assert p["ends_by"] == "budget"
    assert p["target_step"] == 1000 + 7500  # where the budget will leave it at this speed
    # neither a target nor a budget: nothing to estimate, but the speed and the losses still are
    p = progress([a], step=1000, now=100)
    assert p["target_step"] is None and p["percent"] is None and p["eta_s"] is None and p["ends_by"] is None
    assert p["steps_per_s"] == pytest.approx(10.0)


def test_lightning_step_limits() -> None:
    assert step_limits(-1, None) == (None, 1000)  # neither set: Lightning trains 1000 epochs
    assert step_limits(None, None) == (None, 1000)
    assert step_limits(500, None) == (500, None)  # max_steps alone: no epoch limit
    assert step_limits(-1, 10) == (None, 10)
    assert step_limits(500, 3) == (500, 3)
    assert step_limits(-1, None, "12h") == (None, None)  # max_time alone: no epoch limit
    assert step_limits("800", "-1") == (800, None)
    assert step_limits(True, "ten") == (None, None)


def test_steps_per_epoch_from_steps_and_epochs() -> None:
    assert steps_per_epoch([(50, 0), (99, 0)]) is None  # still in the first epoch
    # 100 steps per epoch, seen every 2 s at 9 steps/s: the bounds close in as epochs pass
    seen = [(s, (s - 1) // 100 if s else 0) for s in range(0, 1000, 18)]
    assert steps_per_epoch(seen) == 100
    assert steps_per_epoch([(150, 1)]) == 75  # the least within its bounds [75, 150]
    assert steps_per_epoch([(200, 1), (205, 2)]) == 100  # an end-of-epoch save (200 at epoch 1) and a beat after
    # the real trainer: a beat at each validation's start (the epoch's last step), the next one a beat later
    assert steps_per_epoch([(16, 0), (23, 0), (33, 1), (46, 1), (60, 2)]) == 23
    assert steps_per_epoch([(300, 1), (301, 3)]) == 100  # inconsistent: the tightest upper bound
    assert target(None, 10, 100) == (1000, "max_epochs")
    assert target(700, 10, 100) == (700, "max_steps")
    assert target(None, 10, None) == (None, None)


def test_epochs_bound_the_run_once_an_epoch_has_ended() -> None:
    a = run(1, 0, 60, 0, 10)  # 600 steps, 250 per epoch, 2 s between samples (20 steps)
    seen = [(p.step, (p.step - 1) // 250 if p.step else 0) for p in a.points]  # Lightning: 500 is epoch 1's last
    assert steps_per_epoch(seen) == 250  # bounds [250, 260] after two epochs: 500 is epoch 1's last step
    p = progress([a], step=600, now=60, max_epochs=4, per_epoch=250)
    assert p["target_step"] == 1000 and p["target_from"] == "max_epochs" and p["percent"] == 60.0
    assert p["eta_s"] == pytest.approx(40.0)
    # before the first epoch ended: no target yet, and no claim that the budget is it
    early = progress([run(1, 0, 10, 0, 10)], step=100, now=10, max_epochs=4, budget_s=3600)
    assert early["target_step"] is None and early["percent"] is None and early["ends_by"] is None


def test_a_finished_job_has_no_eta() -> None:
    a = run(1, 0, 100, 0, 10, ended=101, cause="completed")
    p = progress([a], step=1000, now=200, live=False, max_steps=1000)
    assert p["percent"] == 100.0 and p["eta_s"] is None and p["ends_by"] is None and p["lost_s"] == 0
