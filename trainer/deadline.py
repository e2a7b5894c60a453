"""When to stop for a job budget that ends at a wall-clock deadline (torch-free)."""

from __future__ import annotations

import time

# Stop this long before the deadline (at most): time to save last.ckpt, finish W&B and exit.
MAX_MARGIN_S = 60.0
MARGIN_FRACTION = 0.1


def stop_time(deadline: float, now: float | None = None) -> float:
    """When to stop for a budget ending at ``deadline`` (unix time): a margin of min(60 s, 10 % of what is left)."""
    now = time.time() if now is None else now
    remaining = max(0.0, deadline - now)
    return deadline - min(MAX_MARGIN_S, MARGIN_FRACTION * remaining)
