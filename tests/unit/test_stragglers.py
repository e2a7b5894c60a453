"""The straggler and slowdown detectors as pure functions over synthetic per-rank series."""

from __future__ import annotations

import random

from supervisor.rules.stragglers import SlowdownDetector, StragglerDetector, rank_scores


def noisy(rng: random.Random, ms: float, spread: float = 0.15) -> float:
    return ms / 1000 * (1 + rng.uniform(-spread, spread))


def run(detector: StragglerDetector, series: list[dict[int, float]]) -> list[tuple[int, int]]:
    """(observation index, rank) of every straggler named."""
    found = []
    for i, times in enumerate(series):
        found += [(i, s.rank) for s in detector.observe(times, {})]
    return found


def test_scores_compare_each_rank_with_the_median_of_its_peers_and_with_its_own_best() -> None:
    scores = rank_scores({0: 0.010, 1: 0.020, 2: 0.011, 3: 0.009}, {1: 0.010})
    assert round(scores[1].relative, 3) == round(0.010 / 0.020, 3)  # peers' median 10 ms: half their pace
    assert scores[1].individual == 0.5  # twice its own best
    assert scores[0].relative > 1.0 and scores[0].individual == 1.0  # no best known yet: neutral


def test_a_rank_slower_for_a_whole_window_is_named_once_and_its_peers_never() -> None:
    rng = random.Random(0)
    series = [{0: noisy(rng, 10), 1: noisy(rng, 10 + (80 if i >= 5 else 0))} for i in range(30)]
    found = run(StragglerDetector(threshold=0.7, window=4), series)
    assert found == [(8, 1)]  # slow from observation 5: four looks in a row at 5, 6, 7, 8


def test_noise_and_single_slow_looks_never_name_anyone() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        series = [{r: noisy(rng, 10, spread=0.3) for r in range(4)} for _ in range(200)]
        for i in rng.sample(range(200), 10):  # a validation pause or a hiccup: one slow look, not a window
            series[i][rng.randrange(4)] *= 3
        assert run(StragglerDetector(threshold=0.7, window=4), series) == [], seed


def test_a_window_with_one_good_look_is_not_a_straggler() -> None:
    series = [{0: 0.010, 1: 0.030} if i % 4 else {0: 0.010, 1: 0.010} for i in range(40)]
    assert run(StragglerDetector(threshold=0.7, window=4), series) == []


def test_one_rank_alone_has_no_peers_to_straggle_behind() -> None:
    assert StragglerDetector(threshold=0.7, window=2).observe({0: 1.0}, {}) == []


def test_a_single_process_slowdown_is_reported_after_its_own_pace_is_known() -> None:
    det = SlowdownDetector(slow_factor=1.5, window=4)
    rng = random.Random(1)
    verdicts = [det.observe(noisy(rng, 20)) for _ in range(20)]
    assert verdicts == [None] * 20
    slow = [det.observe(noisy(rng, 50)) for _ in range(6)]
    assert slow[:3] == [None] * 3 and slow[3] is not None and 2.0 < slow[3] < 3.0
    assert slow[4:] == [None, None]  # reported once per attempt


def test_a_slow_start_sets_no_false_pace() -> None:
    # the first windows only learn the pace: a job that starts slow and speeds up never reports a slowdown
    det = SlowdownDetector(slow_factor=1.5, window=4)
    assert [det.observe(t) for t in [0.2] * 4 + [0.02] * 30] == [None] * 34
