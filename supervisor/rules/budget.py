"""The time budget: wall clock from the first start, counting downtime and reboots (pure)."""

from __future__ import annotations


def deadline(budget_s: float | None, first_started_at: float | None) -> float | None:
    """When the budget is spent (wall clock), or None (no budget, or never started)."""
    if budget_s is None or first_started_at is None:
        return None
    return first_started_at + budget_s


def budget_spent(budget_s: float | None, first_started_at: float | None, now: float) -> bool:
    """Whether the budget is spent at ``now``."""
    spent_at = deadline(budget_s, first_started_at)
    return spent_at is not None and now >= spent_at
