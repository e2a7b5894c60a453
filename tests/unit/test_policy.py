"""The restart policy: a table of (how it ended, history, clock, policy) -> decision, plus properties."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from supervisor.config import parse_job_config
from supervisor.rules.policy import (
    CAUSES,
    END_REASONS,
    FAILURE_CAUSES,
    FINAL_STATES,
    AttemptEnd,
    PastAttempt,
    RestartPolicy,
    backoff_delay,
    budget_deadline,
    decide,
)

T0 = 1_700_000_000.0  # the job's first start
ELAPSED = 10_000.0  # seconds since the first start, unless a case says otherwise
NOW = T0 + ELAPSED  # the decision's clock
HOUR = 3600.0

POLICY = RestartPolicy(max_restarts=3, restart_window=HOUR, backoff_initial=10.0, backoff_factor=2.0,
                       backoff_max=60.0, no_progress_attempts=4, budget=None)


def policy(**changes: float | int | None) -> RestartPolicy:
    return replace(POLICY, **changes)


def end(cause: str, ckpts: int = 0, reason: str | None = None, ago: float = 0.0) -> AttemptEnd:
    """The attempt that just ended, ``ago`` seconds before NOW."""
    return AttemptEnd(cause=cause, ended_at=NOW - ago, new_checkpoints=ckpts, completion_reason=reason)


def past(*specs: tuple[str | None, int] | tuple[str | None, int, float | None]) -> tuple[PastAttempt, ...]:
    """Earlier attempts, oldest first: (cause, new checkpoints[, seconds before NOW it ended]).

    By default attempt k of m ended (m - k + 1) minutes before NOW: all inside a 1h window.
    """
    out = []
    for i, spec in enumerate(specs, start=1):
        cause, ckpts = spec[0], spec[1]
        ago = spec[2] if len(spec) > 2 else 60.0 * (len(specs) - i + 1)
        ended = None if ago is None else NOW - ago
        out.append(PastAttempt(n=i, started_at=T0 + i, ended_at=ended, cause=cause, new_checkpoints=ckpts))
    return tuple(out)


RESTART, FINISH = "restart", "finish"

# id, end, history, elapsed (NOW - first start), policy, expected (action, delay, state, end_reason)
CASES = [
    # --- endings that are what they say
    ("completed-max-epochs", end("completed", 2, "max_epochs"), (), ELAPSED, POLICY,
     (FINISH, 0, "completed", "finished")),
    ("completed-no-reason", end("completed"), (), ELAPSED, POLICY, (FINISH, 0, "completed", "finished")),
    ("completed-early-stopping-after-failures", end("completed", 0, "early_stopping"),
     past(("crash", 0), ("crash", 0), ("crash", 0)), ELAPSED, POLICY, (FINISH, 0, "completed", "finished")),
    ("completed-deadline-is-budget", end("completed", 1, "deadline"), (), ELAPSED, policy(budget=HOUR),
     (FINISH, 0, "completed", "budget")),
    ("completed-after-deadline-still-finished", end("completed", 1, "max_steps"), (), 2 * HOUR,
     policy(budget=HOUR), (FINISH, 0, "completed", "finished")),
    ("user-stop", end("user_stop"), (), ELAPSED, POLICY, (FINISH, 0, "stopped", "user")),
    ("user-stop-after-deadline", end("user_stop"), (), 2 * HOUR, policy(budget=HOUR),
     (FINISH, 0, "stopped", "user")),
    ("budget-cause", end("budget", 3), (), ELAPSED, policy(budget=HOUR), (FINISH, 0, "completed", "budget")),
    ("config-error-never-retried", end("config_error"), (), ELAPSED, policy(max_restarts=100),
     (FINISH, 0, "failed", "config_error")),
    ("config-error-after-deadline", end("config_error"), (), 2 * HOUR, policy(budget=HOUR),
     (FINISH, 0, "failed", "config_error")),
    # --- restarts that are not the job's failures
    ("reboot-restarts-now", end("reboot"), (), ELAPSED, POLICY, (RESTART, 0, None, None)),
    ("reboot-ignores-failing-history", end("reboot"), past(*[("crash", 0)] * 6), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("user-restart-now", end("user_restart"), past(("hang", 0), ("hang", 0)), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("reboot-after-deadline", end("reboot"), (), HOUR, policy(budget=HOUR), (FINISH, 0, "completed", "budget")),
    ("reboots-do-not-count-toward-max-restarts", end("crash", 1),
     past(("reboot", 1), ("reboot", 1), ("user_restart", 1)), ELAPSED, policy(max_restarts=1),
     (RESTART, 0, None, None)),
    # --- the no-progress streak and the backoff
    ("first-crash-immediate", end("crash"), (), ELAPSED, POLICY, (RESTART, 0, None, None)),
    ("second-crash-backoff-initial", end("crash"), past(("crash", 0)), ELAPSED, POLICY, (RESTART, 10, None, None)),
    ("third-crash-backoff-doubles", end("hang"), past(("crash", 0), ("gpu_fault", 0)), ELAPSED, POLICY,
     (RESTART, 20, None, None)),
    ("backoff-capped-at-max", end("crash"), past(("crash", 0), ("crash", 0)), ELAPSED, policy(backoff_max=15.0),
     (RESTART, 15, None, None)),
    ("backoff-initial-above-max", end("crash"), past(("crash", 0)), ELAPSED, policy(backoff_initial=600.0),
     (RESTART, 60, None, None)),
    ("backoff-factor-one-stays-flat", end("crash"), past(("crash", 0), ("crash", 0)), ELAPSED,
     policy(backoff_factor=1.0), (RESTART, 10, None, None)),
    ("checkpoint-this-attempt-resets-streak", end("crash", 2), past(("crash", 0), ("crash", 0), ("crash", 0)),
     ELAPSED, policy(max_restarts=10), (RESTART, 0, None, None)),
    ("checkpoint-in-history-resets-streak", end("crash"), past(("crash", 0), ("crash", 1), ("crash", 0)), ELAPSED,
     policy(max_restarts=10), (RESTART, 10, None, None)),
    ("reboot-in-history-breaks-streak", end("crash"), past(("crash", 0), ("crash", 0), ("reboot", 0)), ELAPSED,
     POLICY, (RESTART, 0, None, None)),
    ("unrecorded-cause-breaks-streak", end("crash"), past(("crash", 0), (None, 0, None)), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("no-progress-gives-up", end("vanished"), past(("crash", 0), ("hang", 0), ("gpu_fault", 0)), ELAPSED, POLICY,
     (FINISH, 0, "failed", "no_progress")),
    ("no-progress-one-attempt", end("crash"), (), ELAPSED, policy(no_progress_attempts=1),
     (FINISH, 0, "failed", "no_progress")),
    ("no-progress-counts-old-failures", end("crash"),
     past(("crash", 0, 5 * HOUR), ("crash", 0, 4 * HOUR), ("crash", 0, 3 * HOUR)), ELAPSED, POLICY,
     (FINISH, 0, "failed", "no_progress")),
    ("no-progress-checked-before-max-restarts", end("crash"), past(("crash", 0), ("crash", 0), ("crash", 0)), ELAPSED,
     policy(max_restarts=0), (FINISH, 0, "failed", "no_progress")),
    ("history-order-does-not-matter", end("crash"),
     tuple(reversed(past(("crash", 1), ("crash", 0), ("crash", 0)))), ELAPSED, policy(max_restarts=10),
     (RESTART, 20, None, None)),
    # --- a user restart starts a fresh window and streak (the history stays)
    ("user-restart-resets-the-window", end("crash", 1), past(("crash", 1), ("hang", 1), ("user_restart", 1)),
     ELAPSED, policy(max_restarts=1), (RESTART, 0, None, None)),
    ("failures-after-user-restart-count", end("crash", 1),
     past(("crash", 1), ("user_restart", 1), ("crash", 1), ("crash", 1)), ELAPSED, policy(max_restarts=2),
     (FINISH, 0, "failed", "max_restarts")),
    ("user-restart-resets-no-progress", end("crash"),
     past(("crash", 0), ("crash", 0), ("user_restart", 0), ("crash", 0)), ELAPSED, policy(max_restarts=10),
     (RESTART, 10, None, None)),
    # --- max_restarts in the window
    ("max-restarts-exceeded", end("crash", 1), past(("crash", 1), ("hang", 1), ("gpu_fault", 1)), ELAPSED, POLICY,
     (FINISH, 0, "failed", "max_restarts")),
    ("max-restarts-reached-not-exceeded", end("crash", 1), past(("crash", 1), ("hang", 1)), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("max-restarts-zero-first-failure-fails", end("crash", 5), (), ELAPSED, policy(max_restarts=0),
     (FINISH, 0, "failed", "max_restarts")),
    ("failures-outside-window-do-not-count", end("crash", 1),
     past(("crash", 1, 3 * HOUR), ("crash", 1, 2 * HOUR), ("crash", 1, HOUR + 1)), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("window-edge-inclusive", end("crash", 1), past(("crash", 1, 3 * HOUR), ("crash", 1), ("crash", 1, HOUR)),
     ELAPSED, policy(max_restarts=2), (FINISH, 0, "failed", "max_restarts")),
    ("unrecorded-end-not-in-window", end("crash", 1), past(("crash", 1, None), ("crash", 1, None)), ELAPSED,
     policy(max_restarts=1), (RESTART, 0, None, None)),
    ("late-collected-failure-still-counts", end("crash", 1, ago=5 * HOUR), (), ELAPSED, policy(max_restarts=0),
     (FINISH, 0, "failed", "max_restarts")),
    # --- the budget
    ("crash-before-deadline-restarts", end("crash"), (), HOUR - 1, policy(budget=HOUR),
     (RESTART, 0, None, None)),
    ("crash-at-deadline-is-budget", end("crash"), (), HOUR, policy(budget=HOUR),
     (FINISH, 0, "completed", "budget")),
    ("crash-after-deadline-beats-no-progress", end("crash"), past(("crash", 0), ("crash", 0), ("crash", 0)),
     2 * HOUR, policy(budget=HOUR), (FINISH, 0, "completed", "budget")),
    ("backoff-would-outlast-budget", end("crash"), past(("crash", 0)), HOUR - 10, policy(budget=HOUR),
     (FINISH, 0, "completed", "budget")),
    ("backoff-ends-just-before-budget", end("crash"), past(("crash", 0)), HOUR - 10.5, policy(budget=HOUR),
     (RESTART, 10, None, None)),
    # --- the clock
    ("backoff-runs-from-the-end", end("crash", ago=4.0), past(("crash", 0)), ELAPSED, POLICY,
     (RESTART, 6, None, None)),
    ("backoff-already-elapsed", end("crash", ago=600.0), past(("crash", 0)), ELAPSED, POLICY,
     (RESTART, 0, None, None)),
    ("clock-stepped-back-caps-delay", end("crash", ago=-500.0), past(("crash", 0)), ELAPSED, POLICY,
     (RESTART, 10, None, None)),
]


@pytest.mark.parametrize(("attempt_end", "history", "elapsed", "pol", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(attempt_end: AttemptEnd, history: tuple[PastAttempt, ...], elapsed: float,
                        pol: RestartPolicy, expected: tuple[str, float, str | None, str | None]) -> None:
    d = decide(attempt_end, history, now=NOW, first_started_at=NOW - elapsed, policy=pol)
    assert (d.action, d.delay, d.state, d.end_reason) == pytest.approx(expected)
    assert d.message and "\n" not in d.message


def test_a_requeued_job_counts_only_failures_since_the_requeue() -> None:
    # The job gave up (max_restarts), the user fixed the cause and queued it again at T0 + 3:
    # attempts 1 and 2 stay in the history but no longer count.
    gave_up = past(("crash", 0), ("crash", 0))
    assert decide(end("crash"), gave_up, now=NOW, first_started_at=T0, policy=policy(max_restarts=1),
                  counting_since=None).end_reason == "max_restarts"
    fresh = decide(end("crash"), gave_up, now=NOW, first_started_at=T0, policy=policy(max_restarts=1),
                   counting_since=T0 + 3)
    assert (fresh.action, fresh.delay) == (RESTART, 0.0)
    assert "restart 1 of 1" in fresh.message
    # the streak restarts too: no_progress_attempts=2 would have given up on a third empty attempt
    streak = decide(end("hang"), gave_up, now=NOW, first_started_at=T0, policy=policy(no_progress_attempts=2,
                    max_restarts=10), counting_since=T0 + 3)
    assert streak.action == RESTART


def test_messages_say_what_happened() -> None:
    d = decide(end("crash"), past(("crash", 0), ("crash", 0)), now=NOW, first_started_at=T0,
               policy=policy(max_restarts=5))
    assert d.message == "crash; restart 3 of 5 in 1h00m window; retrying in 20s"
    d = decide(end("gpu_fault"), (), now=NOW, first_started_at=T0, policy=POLICY)
    assert d.message == "GPU fault; restart 1 of 3 in 1h00m window; retrying now"
    d = decide(end("hang"), past(("hang", 0), ("hang", 0), ("hang", 0)), now=NOW, first_started_at=T0, policy=POLICY)
    assert d.message == "hang; 4 attempts in a row saved no new checkpoint; giving up"
    d = decide(end("crash", 1), (), now=NOW, first_started_at=T0, policy=policy(max_restarts=0))
    assert d.message == "crash; 1 failure in 1h00m, more than max_restarts=0; giving up"
    d = decide(end("completed", 1, "early_stopping"), (), now=NOW, first_started_at=T0, policy=POLICY)
    assert d.message == "training completed (early_stopping)"
    d = decide(end("reboot"), (), now=T0 + 2 * HOUR, first_started_at=T0, policy=policy(budget=HOUR))
    assert d.message == "node rebooted; time budget of 1h00m spent; not restarting"


def test_unknown_cause_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown cause 'exploded'"):
        decide(end("exploded"), (), now=NOW, first_started_at=T0, policy=POLICY)


@pytest.mark.parametrize(("changes", "match"), [
    ({"max_restarts": -1}, "max_restarts"),
    ({"no_progress_attempts": 0}, "no_progress_attempts"),
    ({"backoff_factor": 0.5}, "backoff_factor"),
    ({"backoff_initial": -1.0}, "backoff_initial"),
    ({"backoff_max": float("inf")}, "backoff_max"),
    ({"restart_window": float("nan")}, "restart_window"),
    ({"budget": 0.0}, "budget"),
], ids=lambda v: str(v) if isinstance(v, str) else next(iter(v)))
def test_policy_rejects_meaningless_numbers(changes: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        policy(**changes)


def test_policy_from_a_loaded_config() -> None:
    cfg = parse_job_config(
        "name: p\nmodel: {class_path: a.B}\ndata: {class_path: a.D}\n"
        "supervision:\n  budget: 1h30m\n  max_restarts: 7\n  restart_window: 2h\n"
        "  backoff: {initial: 5s, factor: 3, max: 10m}\n  no_progress_attempts: 2\n",
        source="p.yaml")
    assert RestartPolicy.from_config(cfg.supervision) == RestartPolicy(
        max_restarts=7, restart_window=7200.0, backoff_initial=5.0, backoff_factor=3.0, backoff_max=600.0,
        no_progress_attempts=2, budget=5400.0)
    defaults = RestartPolicy.from_config(
        parse_job_config("name: p\nmodel: {class_path: a.B}\ndata: {class_path: a.D}\n", source="p.yaml").supervision)
    assert defaults.budget is None
    assert budget_deadline(T0, defaults) is None
    assert budget_deadline(T0, policy(budget=HOUR)) == T0 + HOUR


def test_backoff_of_a_huge_streak_is_the_cap() -> None:
    assert backoff_delay(5000, POLICY) == POLICY.backoff_max
    many = tuple(PastAttempt(n=i, started_at=T0, ended_at=T0 + i, cause="crash", new_checkpoints=0)
                 for i in range(1, 3000))
    d = decide(AttemptEnd("crash", NOW, 0), many, now=NOW, first_started_at=T0,
               policy=policy(max_restarts=10**6, no_progress_attempts=10**6))
    assert (d.action, d.delay) == (RESTART, POLICY.backoff_max)


# --- properties over a grid of histories, clocks and policies

def _random_history(rng: random.Random, length: int) -> tuple[PastAttempt, ...]:
    causes = (*CAUSES, None)
    t = T0
    out = []
    for n in range(1, length + 1):
        start = t + rng.uniform(0, 600)
        t = start + rng.uniform(0, 3 * HOUR)
        out.append(PastAttempt(n=n, started_at=start, ended_at=t if rng.random() > 0.1 else None,
                               cause=rng.choice(causes), new_checkpoints=rng.choice((0, 0, 1, 3))))
    return tuple(out)


POLICIES = [
    POLICY,
    policy(budget=6 * HOUR),
    policy(max_restarts=0, no_progress_attempts=1, budget=HOUR),
    policy(backoff_initial=0.0),
    policy(backoff_initial=30.0, backoff_factor=5.0, backoff_max=900.0, max_restarts=50, no_progress_attempts=20),
]


def test_properties_hold_on_random_histories() -> None:
    rng = random.Random(20240601)
    checked = 0
    for pol, length, cause in itertools.product(POLICIES, range(0, 9), CAUSES):
        for _ in range(6):
            history = _random_history(rng, length)
            last_end = max([a.ended_at for a in history if a.ended_at is not None], default=T0)
            ended_at = last_end + rng.uniform(1, HOUR)
            now = ended_at + rng.choice((0.0, 0.0, rng.uniform(0, 120)))
            e = AttemptEnd(cause, ended_at, rng.choice((0, 0, 2)),
                           rng.choice((None, "max_epochs", "deadline")) if cause == "completed" else None)
            d = decide(e, history, now=now, first_started_at=T0, policy=pol)
            assert d == decide(e, history, now=now, first_started_at=T0, policy=pol)  # pure
            assert d.action in ("restart", "finish")
            assert d.message and "\n" not in d.message
            if d.action == "restart":
                assert 0.0 <= d.delay <= pol.backoff_max
                assert d.state is None and d.end_reason is None
                deadline = budget_deadline(T0, pol)
                assert deadline is None or now + d.delay < deadline, "restarted past the budget"
                assert cause in FAILURE_CAUSES or cause in ("reboot", "user_restart", "diverged", "straggler", "resize")
                if cause not in FAILURE_CAUSES:
                    assert d.delay == 0.0
            else:
                assert d.delay == 0.0
                assert d.state in FINAL_STATES and d.end_reason in END_REASONS
                if cause == "config_error":
                    assert (d.state, d.end_reason) == ("failed", "config_error")
            checked += 1
    assert checked == len(POLICIES) * 9 * len(CAUSES) * 6


def test_delay_grows_along_a_streak_and_never_passes_the_cap() -> None:
    for pol in POLICIES:
        delays = [backoff_delay(streak, pol) for streak in range(0, 40)]
        assert delays[0] == delays[1] == 0.0
        assert all(a <= b for a, b in itertools.pairwise(delays))
        assert max(delays) <= pol.backoff_max


def _disk_full(attempts: tuple[PastAttempt, ...], *full: int) -> tuple[PastAttempt, ...]:
    """``attempts`` with the ones numbered ``full`` marked as failed on a full disk."""
    return tuple(replace(a, disk_full=a.n in full) for a in attempts)


def test_a_disk_full_crash_waits_and_is_not_counted_toward_max_restarts() -> None:
    # issue 11, item 3: three crashes already (max_restarts=3); a fourth on a full disk would give up
    history = past(("crash", 1), ("crash", 1), ("crash", 1))
    assert decide(end("crash"), history, now=NOW, first_started_at=T0, policy=POLICY).end_reason == "max_restarts"
    full = replace(end("crash"), disk_full=True)
    decision = decide(full, history, now=NOW, first_started_at=T0, policy=POLICY)
    assert (decision.action, decision.delay) == (RESTART, 10.0)  # backoff_initial, never at once
    assert "disk full" in decision.message and "not counted" in decision.message


def test_disk_full_waits_grow_along_their_own_streak_and_never_count_as_failures() -> None:
    history = _disk_full(past(("crash", 0), ("crash", 0), ("crash", 0), ("crash", 0), ("crash", 0)), 1, 2, 3, 4, 5)
    full = replace(end("crash"), disk_full=True)
    decision = decide(full, history, now=NOW, first_started_at=T0, policy=POLICY)
    assert (decision.action, decision.delay) == (RESTART, 60.0)  # 10 * 2**5 capped at backoff_max
    # once the disk has room again, a real crash counts only the real failures (none) and restarts at once
    assert decide(end("crash"), history, now=NOW, first_started_at=T0, policy=POLICY).delay == 0.0
    # and disk-full attempts never make a no-progress streak
    assert decide(end("crash"), history, now=NOW, first_started_at=T0,
                  policy=policy(no_progress_attempts=2)).action == RESTART


def test_a_disk_full_wait_that_would_outlast_the_budget_ends_the_job_as_budget() -> None:
    full = replace(end("crash"), disk_full=True)
    decision = decide(full, (), now=NOW, first_started_at=T0, policy=policy(budget=ELAPSED + 5.0))
    assert (decision.action, decision.end_reason) == (FINISH, "budget")


@pytest.mark.parametrize(("detail", "full"), [
    ("CheckpointSaveError: [Errno 28] cannot save checkpoint last.ckpt: disk full (0 MiB free on /x)", True),
    ("cannot record the trainer in /x/monitor.json: No space left on device; trainer killed", True),
    ("RuntimeError: CUDA error: out of memory", False),
    (None, False),
])
def test_is_disk_full_reads_the_details_the_trainer_and_monitor_write(detail: str | None, full: bool) -> None:
    from supervisor.rules.outcome import is_disk_full

    assert is_disk_full(detail) is full
