"""Elastic DDP's pure rule: the world size and accumulation an attempt runs at, and the submit-time refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.rules.elastic import (
    Elastic,
    ElasticPlan,
    accumulation_for,
    check_elastic,
    choose_plan,
    should_grow,
)


def test_the_configured_size_when_it_fits_else_the_largest_that_does() -> None:
    e = Elastic(devices=8, accumulate=1, min_devices=2, sizes=(8, 4, 2))
    assert choose_plan(e, 8) == ElasticPlan(8, 1)
    assert choose_plan(e, 12) == ElasticPlan(8, 1)
    assert choose_plan(e, 7) == ElasticPlan(4, 2)  # 7 fit, but only 8, 4, 2 are allowed
    assert choose_plan(e, 3) == ElasticPlan(2, 4)
    assert choose_plan(e, 1) is None  # below min_devices: the job waits


def test_two_devices_lose_one() -> None:
    e = Elastic(devices=2, accumulate=1, min_devices=1)
    assert e.allowed() == (2, 1)
    assert choose_plan(e, 1) == ElasticPlan(1, 2)
    assert choose_plan(e, 0) is None


def test_a_size_that_cannot_keep_the_global_batch_is_skipped() -> None:
    # 4 x 1 = 4 per-device batches: 3 devices cannot carry it, so 3 free GPUs run 2 ranks x 2
    e = Elastic(devices=4, accumulate=1, min_devices=2, sizes=(4, 3, 2))
    assert accumulation_for(e, 3) is None
    assert choose_plan(e, 3) == ElasticPlan(2, 2)


def test_the_configured_accumulation_scales_too() -> None:
    e = Elastic(devices=4, accumulate=3, min_devices=1)
    assert choose_plan(e, 2) == ElasticPlan(2, 6)
    assert choose_plan(e, 1) == ElasticPlan(1, 12)


def test_grow_only_to_a_larger_size() -> None:
    e = Elastic(devices=4, accumulate=1, min_devices=1, sizes=(4, 2, 1))
    assert should_grow(e, 2, 2) == ElasticPlan(4, 1)
    assert should_grow(e, 2, 1) is None  # 3 would fit, but 3 is not allowed and 2 is what it runs
    assert should_grow(e, 1, 1) == ElasticPlan(2, 2)
    assert should_grow(e, 4, 4) is None  # at its configured size


@pytest.mark.parametrize(("devices", "accumulate", "min_devices", "sizes", "expected"), [
    (2, 1, 1, [], None),
    (8, 1, 2, [8, 4, 2], None),
    (6, 1, 2, [], "cannot be kept at sizes 5, 4: 6 is not a multiple of them"),
    (8, 1, 1, [8, 6, 4], "cannot be kept at size 6: 8 is not a multiple of it"),
    (6, 2, 1, [6, 5, 4], "cannot be kept at size 5: 12 is not a multiple of it"),
    (1, 1, 1, [], "needs a DDP job of trainer.devices >= 2; got 1"),
    (4, 1, 0, [], "min_devices must be between 1 and trainer.devices (4); got 0"),
    (4, 1, 5, [], "min_devices must be between 1 and trainer.devices (4); got 5"),
    (4, 1, 1, [8, 2], "sizes [8] are outside 1..trainer.devices (4)"),
    (4, 1, 4, [], "allows no size but 4"),
])
def test_refusals_name_the_sizes(devices: int, accumulate: int, min_devices: int, sizes: list[int],
                                 expected: str | None) -> None:
    why = check_elastic(devices, accumulate, min_devices, sizes)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why and "\n" not in why


@given(devices=st.integers(2, 16), accumulate=st.integers(1, 8), min_devices=st.integers(1, 16),
       sizes=st.lists(st.integers(1, 16), max_size=5), free=st.integers(0, 20))
def test_the_global_batch_always_holds(devices: int, accumulate: int, min_devices: int, sizes: list[int],
                                       free: int) -> None:
    e = Elastic(devices=devices, accumulate=accumulate, min_devices=min(min_devices, devices), sizes=tuple(sizes))
    plan = choose_plan(e, free)
    if plan is None:
        # nothing allowed that keeps the batch fits: no smaller allowed size would have (largest first)
        assert all(s > free or accumulation_for(e, s) is None for s in e.allowed())
        return
    assert plan.world_size * plan.accumulate == devices * accumulate
    assert e.min_devices <= plan.world_size <= min(free, devices)
    assert plan.world_size in e.allowed()
    # the largest: no allowed, fitting, batch-keeping size above it
    assert not [s for s in e.allowed() if plan.world_size < s <= free and accumulation_for(e, s) is not None]
    if check_elastic(devices, accumulate, e.min_devices, sizes) is None:
        assert all(accumulation_for(e, s) is not None for s in e.allowed())
