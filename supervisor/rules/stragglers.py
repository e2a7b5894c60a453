"""Stragglers and slowdowns from the ranks' heartbeats (pure: fed one observation at a time).

A rank's **relative** score is the median compute time of the *other* ranks divided by
its own (1: as fast as its peers; 0.5: twice as slow); its **individual** score is its
own best full-window median divided by its time now (below 1: slower than it has been).
A rank whose relative score stays under ``threshold`` for ``window`` observations in a
row is a straggler. A single-process job has no peers: a **slowdown** is its step time
above ``slow_factor`` x its own best observed step time for ``window`` observations,
once ``window`` observations have set that best.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import median


@dataclass(frozen=True)
class RankScore:
    """One rank at one observation."""

    rank: int
    compute_s: float
    relative: float
    individual: float


def rank_scores(times: Mapping[int, float], bests: Mapping[int, float | None]) -> dict[int, RankScore]:
    """Every rank's scores from its compute time now (``times``) and its best window (``bests``)."""
    out: dict[int, RankScore] = {}
    for rank, mine in times.items():
        others = [t for r, t in times.items() if r != rank]
        relative = median(others) / mine if others and mine > 0 else 1.0
        best = bests.get(rank)
        individual = best / mine if best is not None and mine > 0 else 1.0
        out[rank] = RankScore(rank=rank, compute_s=mine, relative=min(relative, 99.0), individual=min(individual, 99.0))
    return out


class StragglerDetector:
    """Names each rank the first time it has been a straggler for a whole window (once per attempt)."""

    def __init__(self, *, threshold: float, window: int) -> None:
        self.threshold = threshold
        self.window = window
        self._low: dict[int, deque[bool]] = {}
        self._named: set[int] = set()
        self.last: dict[int, RankScore] = {}

    def observe(self, times: Mapping[int, float], bests: Mapping[int, float | None]) -> list[RankScore]:
        """Feed one observation (every rank's compute time); the ranks newly found straggling."""
        if len(times) < 2:
            return []
        self.last = rank_scores(times, bests)
        found = []
        for rank, score in self.last.items():
            history = self._low.setdefault(rank, deque(maxlen=self.window))
            history.append(score.relative < self.threshold)
            if len(history) == self.window and all(history) and rank not in self._named:
                self._named.add(rank)
                found.append(score)
        return found


class SlowdownDetector:
    """A single-process job slower than its own best for a whole window (reported once per attempt)."""

    def __init__(self, *, slow_factor: float, window: int) -> None:
        self.slow_factor = slow_factor
        self.window = window
        self._recent: deque[float] = deque(maxlen=window)
        self._best: float | None = None
        self._seen = 0
        self._reported = False

    @property
    def best(self) -> float | None:
        """The lowest full-window median step time seen so far (None before the first full window)."""
        return self._best

    def observe(self, step_time: float) -> float | None:
        """Feed one step time; the slowdown factor the first time it has lasted a whole window, else None."""
        self._recent.append(step_time)
        self._seen += 1
        if len(self._recent) < self.window:
            return None
        typical = median(self._recent)
        if self._best is None or self._seen <= 2 * self.window:
            # the first windows set the job's own pace (start-up is excluded: the core feeds train-phase steps only)
            self._best = typical if self._best is None else min(self._best, typical)
            return None
        if all(t > self.slow_factor * self._best for t in self._recent) and not self._reported:
            self._reported = True
            return typical / self._best
        self._best = min(self._best, typical)
        return None
