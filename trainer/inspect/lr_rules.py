"""Reading the learning-rate finder's curve: the suggestion rules, as pure functions (no torch, no Lightning).

Lightning's finder (``Tuner.lr_find``) records, for each step at a rising rate,
an exponential moving average of the loss (``beta = 0.98``) divided by a bias
correction. Two things make that curve a poor thing to read directly:

- its bias correction is one step ahead (it divides by ``1 - beta**(step + 1)``
  after the step counter has already moved on), so the first point is about
  half the loss and the curve *rises* over its first few dozen points whatever
  the rate does;
- an average over ~50 steps lags the loss by about half the run: the
  smoothed minimum sits decades to the right of where the loss really bottomed.

So this module recovers the per-step losses from the recorded curve
(:func:`unsmooth`; the average is inverted exactly), re-smooths them without lag
(:func:`centred`, a running median then a centred mean), and reads the rules
off that. Fastai's "valley" is computed, as fastai does, on the moving average
with its bias corrected (:func:`debias`). Lightning's own rule runs on
Lightning's curve as recorded, to show what it would have said.

The rules (each a few lines, written here):

- ``valley`` (fastai): the longest decreasing run of points, taken at its middle;
- ``steepest_descent``: the steepest fall per decade, within the descent region only;
- ``minimum_div_10``: the rate at the lowest loss, divided by 10;
- ``lightning``: the steepest negative gradient d loss / d lr over the whole
  curve (Lightning's ``LRFinder.suggestion``). Measured per unit of rate, not per
  decade, it favours the smallest rates, where noise of 1e-4 at lr 1e-7 is a
  "gradient" of 1e3: it lands on the flat start of the curve.

The default is the middle (by value) of ``valley``, ``steepest_descent`` and
``minimum_div_10``: each fails on some curve in its own way, and the middle of
three is wrong only when two of them are.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

BETA = 0.98  # the moving average Lightning's _LRCallback records
LIGHTNING_SKIP = (10, 1)  # LRFinder.suggestion's skip_begin, skip_end
SKIP_END = 5  # the last points: the divergence that stopped the finder (fastai skips 5 too)
MIN_POINTS = 12  # fewer usable points than this: no suggestion
DESCENT_FROM_TOP = 0.05  # the descent starts after the last point within this share of the drop from the top
MIN_RELATIVE_DROP = 0.02  # a fall smaller than this share of the loss is no descent
MIN_NOISE_DROP = 10.0  # ... nor one under 10 times the noise of the smoothed curve (pure noise: up to ~8)

VERIFY_TOP = 3  # --verify with no number: the top three suggestions (and the config's rate)
VERIFY_STEPS = 100  # steps of each --verify fit, as many as the finder's

RULES = ("valley", "steepest_descent", "minimum_div_10", "lightning")
CONSENSUS = ("valley", "steepest_descent", "minimum_div_10")  # the default is their middle
DESCRIPTIONS = {
    "valley": "fastai's valley: the middle of the longest decreasing run",
    "steepest_descent": "the steepest fall per decade, within the descent region",
    "minimum_div_10": "the rate at the lowest loss, divided by 10",
    "lightning": "Lightning's rule: the steepest d loss / d lr over the whole curve",
}


@dataclass(frozen=True)
class Suggestion:
    """One rule's rate; ``index`` is its point on the curve (for the plot)."""

    rule: str
    lr: float
    index: int
    before_descent: bool = False  # the loss had not yet started to fall at this rate

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.rule]


@dataclass(frozen=True)
class Descent:
    """Where the smoothed loss falls: from ``start`` (the last point near the top) to ``end`` (its minimum)."""

    start: int
    end: int
    top: float
    bottom: float

    @property
    def drop(self) -> float:
        return self.top - self.bottom


@dataclass
class Reading:
    """What the curve says: the curves behind the rules, the suggestions, the default or why there is none."""

    lrs: list[float]
    recorded: list[float]  # Lightning's curve as recorded
    ema: list[float]  # the same moving average, its bias corrected
    raw: list[float]  # the per-step losses recovered from it
    smooth: list[float]  # raw, smoothed without lag (what the rules but valley and lightning read)
    begin: int  # the first and one past the last point the rules read
    end: int
    descent: Descent | None
    suggestions: list[Suggestion] = field(default_factory=list)
    default: Suggestion | None = None
    reason: str | None = None  # why there is no default
    warnings: list[str] = field(default_factory=list)

    def get(self, rule: str) -> Suggestion | None:
        """The suggestion of ``rule``, or None."""
        return next((s for s in self.suggestions if s.rule == rule), None)


def debias(recorded: Sequence[float], beta: float = BETA) -> list[float]:
    """Lightning's recorded curve with the bias correction of the moving average at the right step.

    Point k (from 0) is ``avg_k / (1 - beta**(k + 2))`` as recorded; the average of
    k + 1 values is corrected by ``1 - beta**(k + 1)``.
    """
    return [v * (1 - beta ** (k + 2)) / (1 - beta ** (k + 1)) for k, v in enumerate(recorded)]


def unsmooth(recorded: Sequence[float], beta: float = BETA) -> list[float]:
    """The per-step losses behind Lightning's recorded curve (the moving average inverted exactly).

    A non-finite point (a step without a loss, or a loss that overflowed) gives
    NaN and leaves the average as it was, as Lightning does for a missing loss.
    """
    out: list[float] = []
    previous = 0.0
    for k, value in enumerate(recorded):
        if not math.isfinite(value):
            out.append(math.nan)
            continue
        average = value * (1 - beta ** (k + 2))
        out.append((average - beta * previous) / (1 - beta))
        previous = average
    return out


def centred(values: Sequence[float], half: int) -> list[float]:
    """A running median of 5 (spikes out), then a centred mean over ``2 * half + 1`` points (no lag)."""
    n = len(values)
    median = [statistics.median(values[max(0, i - 2):i + 3]) for i in range(n)]
    return [statistics.fmean(median[max(0, i - half):i + half + 1]) for i in range(n)]


def gradient(ys: Sequence[float], xs: Sequence[float]) -> list[float]:
    """d ys / d xs at each point, as ``torch.gradient`` computes it (second order inside, first at the ends)."""
    n = len(ys)
    if n < 2:
        return [0.0] * n
    out = [(ys[1] - ys[0]) / (xs[1] - xs[0])]
    for i in range(1, n - 1):
        hs, hd = xs[i] - xs[i - 1], xs[i + 1] - xs[i]
        out.append((hs * hs * ys[i + 1] + (hd * hd - hs * hs) * ys[i] - hd * hd * ys[i - 1]) / (hs * hd * (hd + hs)))
    out.append((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
    return out


def lightning_rule(lrs: Sequence[float], recorded: Sequence[float]) -> int | None:
    """Lightning's ``LRFinder.suggestion()``: the index of the steepest negative d loss / d lr, ends skipped."""
    skip_begin, skip_end = LIGHTNING_SKIP
    kept = [i for i in range(skip_begin, len(recorded) - skip_end) if math.isfinite(recorded[i])]
    if len(kept) < 2:
        return None
    slopes = gradient([recorded[i] for i in kept], [lrs[i] for i in kept])
    return kept[min(range(len(kept)), key=slopes.__getitem__)]


def valley_rule(losses: Sequence[float]) -> int:
    """Fastai's valley: the end of the longest decreasing subsequence, stepped back its length, then halfway on.

    The index is into ``losses``.
    """
    n = len(losses)
    longest = [1] * n  # the longest decreasing subsequence ending at each point
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return start + int(third) + int(third / 2)


def find_descent(lrs: Sequence[float], smooth: Sequence[float], noise: float) -> Descent | None:
    """The descent region of ``smooth`` (indices into it), or None when the loss does not really fall."""
    n = len(smooth)
    bottom_at = min(range(n), key=smooth.__getitem__)
    top = max(smooth[:bottom_at + 1])
    bottom = smooth[bottom_at]
    drop = top - bottom
    if drop <= 0 or drop < MIN_RELATIVE_DROP * abs(top) or drop < MIN_NOISE_DROP * noise:
        return None
    start = max(i for i in range(bottom_at + 1) if smooth[i] >= bottom + (1 - DESCENT_FROM_TOP) * drop)
    if bottom_at - start < 2:
        return None
    return Descent(start=start, end=bottom_at, top=top, bottom=bottom)


def read_curve(lrs: Sequence[float], recorded: Sequence[float]) -> Reading:
    """Every rule's suggestion from the finder's curve (``lrs``, Lightning's recorded ``loss``), and the default."""
    lrs, recorded = [float(x) for x in lrs], [float(x) for x in recorded]
    n = len(recorded)
    ema = debias(recorded)
    raw = unsmooth(recorded)
    finite = [i for i in range(n) if math.isfinite(raw[i]) and lrs[i] > 0]
    half = max(2, n // 25)
    smooth = [math.nan] * n
    if finite:
        for i, v in zip(finite, centred([raw[i] for i in finite], half), strict=True):
            smooth[i] = v
    begin, end = max(1, n // 10), n - SKIP_END  # the start (first steps) and the end (divergence) skipped
    kept = [i for i in finite if begin <= i < end and math.isfinite(ema[i])]
    reading = Reading(lrs=lrs, recorded=recorded, ema=ema, raw=raw, smooth=smooth, begin=begin, end=end,
                      descent=None)
    at = lightning_rule(lrs, recorded)
    if len(kept) < MIN_POINTS:
        reading.reason = (f"the finder recorded {n} points ({len(finite)} finite) and the rules need "
                          f"{MIN_POINTS} after skipping the first {begin} and the last {SKIP_END}; raise --steps, "
                          "or check that the loss is finite")
        if at is not None:
            reading.suggestions.append(Suggestion("lightning", lrs[at], at))
        return reading

    curve = [smooth[i] for i in kept]
    residuals = sorted(abs(raw[i] - smooth[i]) for i in kept)
    noise = 1.4826 * residuals[len(residuals) // 2] / math.sqrt(2 * half + 1)  # of the smoothed curve
    local = find_descent([lrs[i] for i in kept], curve, noise)
    descent = reading.descent = None if local is None else Descent(kept[local.start], kept[local.end], local.top,
                                                                      local.bottom)

    def suggest(rule: str, index: int, lr: float | None = None) -> Suggestion:
        early = descent is None or index < descent.start
        return Suggestion(rule, lrs[index] if lr is None else lr, index, before_descent=early)

    reading.suggestions.append(suggest("valley", kept[valley_rule([ema[i] for i in kept])]))
    if descent is not None and local is not None:
        logs = [math.log10(lrs[i]) for i in kept]
        slopes = gradient(curve, logs)
        steepest = min(range(local.start, local.end + 1), key=slopes.__getitem__)
        reading.suggestions.append(suggest("steepest_descent", kept[steepest]))
    bottom_at = kept[min(range(len(kept)), key=curve.__getitem__)]
    tenth = lrs[bottom_at] / 10
    near = min(kept, key=lambda i: abs(math.log(lrs[i] / tenth)))  # the point nearest a tenth of the rate
    reading.suggestions.append(suggest("minimum_div_10", near, tenth))
    if at is not None:
        reading.suggestions.append(suggest("lightning", at))
    reading.suggestions.sort(key=lambda s: RULES.index(s.rule))

    if descent is None:
        reading.reason = ("the loss does not fall over the range tried (no descent region): the curve says nothing "
                          "about the rate; check the range (--min-lr, --max-lr), --steps, or the model's loss")
        return reading
    for s in reading.suggestions:
        if s.before_descent:
            reading.warnings.append(f"{s.rule} ({s.lr:.3g}) lies where the loss had not yet started to fall "
                                    f"(it falls from {lrs[descent.start]:.3g})")
    if descent.end >= kept[-1]:
        reading.warnings.append(f"the loss was still falling at the largest rate read ({lrs[kept[-1]]:.3g}): "
                                "raise --max-lr to see where it stops")
    middle = sorted((s for s in reading.suggestions if s.rule in CONSENSUS), key=lambda s: s.lr)
    choice = middle[len(middle) // 2]
    if choice.before_descent:
        reading.reason = (f"the suggestions lie where the loss had not yet started to fall (it falls from "
                          f"{lrs[descent.start]:.3g} to its lowest at {lrs[descent.end]:.3g}): read the plot")
        return reading
    reading.default = choice
    return reading
