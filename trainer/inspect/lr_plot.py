"""``lr_find.png``: the finder's curve, the descent region, every rule's suggestion, the config's rate, and
``--verify``'s results (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; must precede pyplot
import matplotlib.pyplot as plt

from trainer.inspect.lr_rules import Reading

WIDTH, HEIGHT, DPI = 9.6, 5.6, 100  # 960 × 560 px
COLOURS = {"valley": "tab:green", "steepest_descent": "tab:orange", "minimum_div_10": "tab:purple",
           "lightning": "tab:red"}


def write_plot(reading: Reading, path: Path, *, config_lr: float | None = None, verification: Any = None) -> None:
    """Loss against learning rate (log x): the per-step losses, the curves the rules read, and the rates."""
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT), dpi=DPI)
    try:
        _draw(ax, reading, config_lr, verification)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)


def _draw(ax: Any, reading: Reading, config_lr: float | None, verification: Any) -> None:
    lrs = reading.lrs

    def finite(values: list[float]) -> tuple[list[float], list[float]]:
        pairs = [(x, y) for x, y in zip(lrs, values, strict=False) if x > 0 and math.isfinite(y)]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    ax.plot(*finite(reading.raw), ".", color="0.75", markersize=3, label="loss at each step")
    ax.plot(*finite(reading.recorded), ":", color="0.55", linewidth=1, label="Lightning's smoothed loss, as recorded")
    ax.plot(*finite(reading.ema), "--", color="tab:blue", linewidth=1, alpha=0.6,
            label="the same, bias fixed (valley reads it)")
    ax.plot(*finite(reading.smooth), "-", color="tab:blue", linewidth=2,
            label="smoothed without lag (the rules read it)")
    if reading.descent is not None:
        ax.axvspan(lrs[reading.descent.start], lrs[reading.descent.end], color="tab:green", alpha=0.08,
                   label="descent region")
    scores = _scores(verification)
    for s in reading.suggestions:
        text = f"{s.rule} {s.lr:.3g}"
        if s is reading.default:
            text += " (default)"
        if s.before_descent:
            text += " (before the descent)"
        text += scores.get(s.rule, "")
        ax.axvline(s.lr, color=COLOURS.get(s.rule, "k"), linewidth=2.5 if s is reading.default else 1.2,
                   linestyle="-" if s is reading.default else "--", label=text)
    if config_lr is not None and config_lr > 0:
        ax.axvline(config_lr, color="k", linewidth=1, linestyle="-.",
                   label=f"config {config_lr:.3g}" + scores.get("config", ""))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    low, high = _y_range(reading)
    if low < high:
        ax.set_ylim(low, high)
    title = "learning-rate finder"
    if verification is not None and verification.winner is not None:
        title += f": --verify picked {verification.winner.lr:.3g}"
    elif reading.default is not None:
        title += f": {reading.default.lr:.3g} ({reading.default.rule})"
    else:
        title += ": no suggestion"
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")


def _scores(verification: Any) -> dict[str, str]:
    """Legend text per rule (and "config") that was verified: the metric after its short fit, the winner starred."""
    if verification is None:
        return {}
    out: dict[str, str] = {}
    for run in verification.runs:
        value = "not finite" if run.value is None else f"{run.value:.4g}"
        text = f"; {verification.monitor} {value} at {run.lr:.3g}" + (" ★" if run.winner else "")
        out.update((label, text) for label in run.labels)
    return out


def _y_range(reading: Reading) -> tuple[float, float]:
    """From a little under the lowest smoothed loss to a little over the highest before the minimum."""
    kept = [v for v in reading.smooth[reading.begin:reading.end] if math.isfinite(v)]
    kept += [v for v in reading.ema[reading.begin:reading.end] if math.isfinite(v)]
    if not kept:
        return 0.0, 0.0
    low, high = min(kept), max(kept)
    span = (high - low) or abs(high) or 1.0
    return low - 0.15 * span, high + 0.25 * span
