"""Young/Daly's checkpoint interval as a pure function: the formula, the job's own failure rate, the bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.rules.cadence import MAX_STEPS, MIN_STEPS, choose_cadence, job_mtbf, optimal_interval

HOUR = 3600.0


def test_the_interval_is_dalys_first_order_optimum() -> None:
    # C = 10 s, M = 24 h: sqrt(2 * 10 * 86400) - 10 = 1304.5 s
    assert math.isclose(optimal_interval(10.0, 24 * HOUR), math.sqrt(2 * 10 * 86400) - 10)
    # a save that costs more than the job runs between failures: save once per failure
    assert optimal_interval(100.0, 30.0) == 30.0
    with pytest.raises(ValueError):
        optimal_interval(0.0, HOUR)


def test_a_cheap_save_and_no_failures_checkpoint_rarely_and_failures_make_it_often() -> None:
    calm = choose_cadence(save_s=0.05, step_s=0.02, running_s=600.0, failures=0, assumed_mtbf_s=24 * HOUR)
    stormy = choose_cadence(save_s=0.05, step_s=0.02, running_s=60.0, failures=3, assumed_mtbf_s=24 * HOUR)
    assert calm.every_n_train_steps > stormy.every_n_train_steps
    # three kills in a minute: the job's own MTBF, 20 s, not the 24 h prior's ~6 h
    assert math.isclose(stormy.mtbf_s, 20.0)
    assert stormy.every_n_train_steps == round(optimal_interval(0.05, stormy.mtbf_s) / 0.02)


def test_the_mtbf_blends_the_prior_for_one_failure_then_is_the_jobs_own() -> None:
    assert job_mtbf(0.0, 0, 24 * HOUR) == 24 * HOUR
    assert job_mtbf(60.0, 1, 24 * HOUR) == (60.0 + 24 * HOUR) / 2  # one early failure: not absurdly short
    assert job_mtbf(600.0, 10, 24 * HOUR) == 60.0  # a kill a minute: a minute, whatever the prior said
    assert job_mtbf(10 * HOUR, 9, 10 * HOUR) == 10 * HOUR / 9


@given(running=st.floats(0, 1e7), failures=st.integers(0, 1000), assumed=st.floats(1, 1e7),
       more=st.floats(0.1, 1e6))
def test_the_mtbf_never_grows_with_a_failure_and_never_shrinks_with_failure_free_time(
        running: float, failures: int, assumed: float, more: float) -> None:
    now = job_mtbf(running, failures, assumed)
    assert job_mtbf(running, failures + 1, assumed) <= now * (1 + 1e-9)
    assert job_mtbf(running + more, failures, assumed) >= now * (1 - 1e-9)


def test_the_steps_stay_within_bounds() -> None:
    assert choose_cadence(save_s=0.001, step_s=10.0, running_s=0, failures=50,
                          assumed_mtbf_s=60).every_n_train_steps == MIN_STEPS
    assert choose_cadence(save_s=60.0, step_s=0.0001, running_s=0, failures=0,
                          assumed_mtbf_s=1e9).every_n_train_steps == MAX_STEPS


@pytest.mark.parametrize("value", ["often", "0", "2.5"])
def test_a_bad_interval_is_one_line_naming_the_key(value: str) -> None:
    from supervisor.config import parse_job_config
    from supervisor.errors import ConfigError

    base = "name: x\nmodel: {class_path: a.B}\ndata: {class_path: a.C}\n"
    with pytest.raises(ConfigError) as err:
        parse_job_config(base, source="x.yaml", overrides=[f"checkpoint.every_n_train_steps={value}"])
    assert str(err.value).startswith("x.yaml: checkpoint.every_n_train_steps: must be a whole number of steps")
    assert "\n" not in str(err.value)
    assert parse_job_config(base, source="x.yaml", overrides=["checkpoint.every_n_train_steps=auto"]) \
        .checkpoint.every_n_train_steps == "auto"
