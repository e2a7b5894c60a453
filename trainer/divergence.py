"""Divergence detection over a stream of training losses (pure Python: no torch, no Lightning).

A non-finite loss diverges at once. A spike is a loss above ``spike_factor`` x the
median of the last ``window`` finite losses, ``patience`` steps in a row, once
``warmup_steps`` have passed: the median shrugs off the single noisy batches an
EMA would follow, and the patience the one bad batch a healthy run recovers from.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from statistics import median
from typing import Any

NON_FINITE_LOSS = "non_finite_loss"
LOSS_SPIKE = "loss_spike"
NON_FINITE_METRIC = "non_finite_metric"  # a user's EarlyStopping(check_finite=True) stopped the fit
ANOMALY = "anomaly"  # torch.autograd.detect_anomaly raised on a NaN in the backward
OTHER_RANK = "rank"  # this rank stopped because the rank named diverged (the collective agreed on it)


@dataclass(frozen=True)
class Divergence:
    """What diverged: the first bad step (its loss computed on the weights of that step), which check, the values."""

    step: int
    check: str
    value: float | None = None
    baseline: float | None = None
    rank: int = 0

    def to_record(self) -> dict[str, Any]:
        """The exit record's ``divergence`` (JSON: a non-finite value becomes its name)."""
        data = asdict(self)
        for key in ("value", "baseline"):
            if data[key] is not None and not math.isfinite(data[key]):
                data[key] = str(data[key])
        return data

    def describe(self) -> str:
        """One line for people (the attempt's detail)."""
        what = {NON_FINITE_LOSS: f"non-finite loss ({self.value})",
                LOSS_SPIKE: f"loss spike ({_num(self.value)} against a median of {_num(self.baseline)})",
                NON_FINITE_METRIC: "a non-finite monitored metric (EarlyStopping)",
                ANOMALY: "a NaN in the backward pass (detect_anomaly)",
                OTHER_RANK: "another rank's loss diverged"}.get(self.check, self.check)
        return f"diverged at step {self.step}: {what}" + (f" on rank {self.rank}" if self.rank else "")


class Diverged(Exception):
    """Raised inside the fit when the loss diverged; the attempt's exit record says ``diverged``."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.describe())
        self.divergence = divergence


class SpikeDetector:
    """Feed it each step's loss; it answers with a ``Divergence`` the step the run is judged diverged."""

    def __init__(self, *, spike_factor: float | None, patience: int, window: int, warmup_steps: int) -> None:
        self.spike_factor = spike_factor
        self.patience = patience
        self.warmup_steps = warmup_steps
        self._recent: deque[float] = deque(maxlen=window)
        self._streak_start: int | None = None  # first step of the current run of spiking losses
        self._streak = 0

    def update(self, step: int, loss: float, rank: int = 0) -> Divergence | None:
        """The verdict after the loss of ``step`` (the step's weights produced it)."""
        if not math.isfinite(loss):
            return Divergence(step=step, check=NON_FINITE_LOSS, value=loss, rank=rank)
        if self.spike_factor is not None and step >= self.warmup_steps and len(self._recent) >= 3:
            baseline = median(self._recent)
            if baseline > 0 and loss > self.spike_factor * baseline:
                if self._streak == 0:
                    self._streak_start = step
                self._streak += 1
                if self._streak >= self.patience:
                    assert self._streak_start is not None
                    return Divergence(step=self._streak_start, check=LOSS_SPIKE, value=loss, baseline=baseline,
                                      rank=rank)
                return None  # a spiking loss never joins the baseline it is judged against
        self._streak, self._streak_start = 0, None
        self._recent.append(loss)
        return None


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"
