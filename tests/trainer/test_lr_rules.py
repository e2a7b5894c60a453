"""The learning-rate finder's curve read by the rules (``trainer/inspect/lr_rules.py``), on synthetic curves.

Each curve is a loss as a function of log10(lr), with noise, recorded exactly as
Lightning's finder records it (its moving average, its bias correction one step
ahead, its early stop at 4× the best loss): what ``Tuner.lr_find`` would hand
over for a model whose loss behaved so. No torch here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from trainer.inspect.lr_rules import (
    BETA,
    CONSENSUS,
    centred,
    debias,
    gradient,
    lightning_rule,
    read_curve,
    unsmooth,
    valley_rule,
)

STEPS = 100


def finder_rates(n: int = STEPS, low: float = 1e-8, high: float = 1.0) -> list[float]:
    """Lightning's exponential schedule: low·(high/low)^(i/(n-1))."""
    return [low * (high / low) ** (i / (n - 1)) for i in range(n)]


def lightning_records(rates: list[float], loss_at: Callable[[float], float], noise: float = 0.0,
                      seed: int = 0) -> tuple[list[float], list[float]]:
    """(rates, losses) as Lightning's _LRCallback records them for a per-step loss of ``loss_at(log10 lr)``."""
    rng = random.Random(seed)
    average, best, recorded = 0.0, math.inf, []
    for step, lr in enumerate(rates, start=1):  # the callback reads global_step after the optimizer step
        loss = loss_at(math.log10(lr)) * (1 + noise * rng.gauss(0, 1))
        average = BETA * average + (1 - BETA) * loss
        smoothed = average / (1 - BETA ** (step + 1))
        recorded.append(smoothed)
        if step > 1 and smoothed > 4 * best:
            break  # Lightning's early stop on divergence
        if smoothed < best or step == 1:
            best = smoothed
    return rates[:len(recorded)], recorded


def issue_shape(x: float) -> float:
    """Issue 36's autoencoder: flat at 0.26 up to 1e-3, down to 0.04 at 0.3, then diverging."""
    if x <= -3:
        return 0.26
    if x <= -0.5:
        return 0.26 - 0.22 * (1 - math.cos(math.pi * (x + 3) / 2.5)) / 2
    return 0.04 * 10 ** (3 * (x + 0.5))


def clean_u(x: float) -> float:
    """A U in log10(lr), lowest (1.0) at 1e-4."""
    return 1 + ((x + 4) / 2) ** 2


def test_the_recorded_curve_is_inverted_exactly() -> None:
    raw = [2.0 + math.sin(i / 7) + 0.1 * (i % 3) for i in range(60)]
    average, recorded = 0.0, []
    for step, loss in enumerate(raw, start=1):
        average = BETA * average + (1 - BETA) * loss
        recorded.append(average / (1 - BETA ** (step + 1)))
    assert unsmooth(recorded) == pytest.approx(raw, rel=1e-9)
    # the moving average with the right correction: a constant loss is a constant curve from the first point
    flat = lightning_records(finder_rates(30), lambda x: 3.0)[1]
    assert flat[0] == pytest.approx(1.5, rel=0.02)  # Lightning's first point: about half the loss
    assert debias(flat) == pytest.approx([3.0] * 30, rel=1e-12)


def test_a_missing_loss_leaves_the_average_alone() -> None:
    recorded = [1.0, math.nan, 1.0]
    raw = unsmooth(recorded)
    assert math.isnan(raw[1]) and math.isfinite(raw[2])


def test_gradient_matches_the_second_order_formula() -> None:
    xs = [0.0, 1.0, 3.0, 4.0]
    ys = [x * x for x in xs]
    assert gradient(ys, xs) == pytest.approx([1.0, 2.0, 6.0, 7.0])  # exact inside for a parabola


def test_centred_smoothing_does_not_lag() -> None:
    step = [0.0] * 20 + [1.0] * 20
    smooth = centred(step, 2)
    assert smooth[10] == 0.0 and smooth[30] == 1.0
    assert 0.2 < smooth[20] < 0.8  # the jump stays where it is


def test_valley_is_the_middle_of_the_longest_decreasing_run() -> None:
    losses = [5, 5, 5, 4, 3, 2, 1, 0, 2, 9]
    assert valley_rule(losses) == 4  # 5 4 3 2 1 0 ends at 7, 6 long: from 1, a third (2) and a sixth (1) on


def test_the_issues_shape_gives_a_rate_inside_the_descent() -> None:
    rates, recorded = lightning_records(finder_rates(), issue_shape, noise=0.02)
    reading = read_curve(rates, recorded)
    # the rising start is Lightning's bias correction: the recorded curve climbs, the per-step losses do not
    assert recorded[20] > 1.2 * recorded[0]
    assert max(reading.smooth[5:40]) < 1.05 * min(reading.smooth[5:40])
    assert reading.descent is not None
    assert 1e-3 <= reading.lrs[reading.descent.start] <= 5e-3 and 0.1 <= reading.lrs[reading.descent.end] <= 0.5
    assert reading.default is not None and reading.default.rule in CONSENSUS
    assert 3e-3 <= reading.default.lr <= 0.1, reading.suggestions
    assert reading.reason is None
    # Lightning's rule lands on the flat part, before the loss falls, and says so
    lightning = reading.get("lightning")
    assert lightning is not None and lightning.lr < 1e-4 and lightning.before_descent
    assert any(w.startswith("lightning (") and "had not yet started to fall" in w for w in reading.warnings)
    # and it is exactly what LRFinder.suggestion() computes (tests/trainer/test_lr_lightning.py runs the real one)
    assert lightning_rule(rates, recorded) == lightning.index


def test_a_clean_u_suggests_below_its_minimum() -> None:
    reading = read_curve(*lightning_records(finder_rates(), clean_u))
    assert reading.default is not None
    minimum = reading.get("minimum_div_10")
    assert minimum is not None and minimum.lr == pytest.approx(1e-5, rel=0.3)  # lowest at 1e-4, ÷ 10
    assert 1e-6 <= reading.default.lr <= 5e-5
    assert not reading.default.before_descent


@pytest.mark.parametrize("seed", range(8))
def test_a_noisy_curve_still_gives_a_rate_inside_the_descent(seed: int) -> None:
    reading = read_curve(*lightning_records(finder_rates(), issue_shape, noise=0.15, seed=seed))
    assert reading.default is not None, reading.reason
    assert 2e-3 <= reading.default.lr <= 0.1, reading.suggestions


@pytest.mark.parametrize("seed", range(8))
def test_no_descent_gives_a_warning_not_a_number(seed: int) -> None:
    reading = read_curve(*lightning_records(finder_rates(), lambda x: 2.3, noise=0.05, seed=seed))
    assert reading.default is None and reading.descent is None
    assert reading.reason is not None and "no descent region" in reading.reason
    assert all(s.before_descent for s in reading.suggestions)
    assert reading.get("lightning") is not None  # Lightning's rule gives a number on pure noise: why it is no default


def cliff(x: float) -> float:
    """Flat at 2.3 up to 1e-2, down to 0.3 within a fifth of a decade, then diverging."""
    if x <= -2:
        return 2.3
    if x <= -1.8:
        return 2.3 - 2.0 * (x + 2) / 0.2
    return 0.3 * 10 ** (2 * (x + 1.8))


def test_a_default_before_the_descent_is_a_warning_not_a_number() -> None:
    reading = read_curve(*lightning_records(finder_rates(), cliff, noise=0.02))
    assert reading.descent is not None and reading.default is None
    assert reading.reason is not None and reading.reason.startswith("the suggestions lie where the loss had not yet")
    early = {s.rule for s in reading.suggestions if s.before_descent}
    assert {"valley", "minimum_div_10"} <= early  # two of the three: their middle is before the descent too
    assert sum("had not yet started to fall" in w for w in reading.warnings) == len(early)


def test_a_loss_that_only_rises_has_no_descent() -> None:
    reading = read_curve(*lightning_records(finder_rates(), lambda x: 1 + 10 ** (x + 2)))
    assert reading.default is None and reading.reason is not None and "no descent region" in reading.reason


def test_too_few_points_say_so() -> None:
    reading = read_curve(*lightning_records(finder_rates(8), issue_shape))
    assert reading.default is None and reading.reason is not None
    assert reading.reason.startswith("the finder recorded 8 points (8 finite)")


def test_a_loss_still_falling_at_the_largest_rate_is_noted() -> None:
    reading = read_curve(*lightning_records(finder_rates(), lambda x: 1 - 0.1 * (x + 8)))
    assert reading.default is not None
    assert any("still falling at the largest rate" in w for w in reading.warnings)
